"""End-to-end speech throughput on a GPU with full-size model architectures and random weights.

Nothing can be downloaded where this runs, so the two models are built from config at the
published sizes — Parakeet-TDT-0.6B-v2 (FastConformer 24 x 1024, TDT decoder) and the streaming
Sortformer 4spk-v2 (NEST FastConformer 17 x 512 + 18-layer transformer) — with random
weights, saved as .nemo files and loaded through the project's own `SpeechModels` (the local
.nemo code path). A few synthetic hour-long episodes are served over HTTP on 127.0.0.1 and
each goes through the real per-episode steps of `podcastpile.speech.pipeline`:
fetch → decode → diarize → transcribe → build_result.

Stdout: one JSON object (throughput, share of time per step, GPU name, peak GPU memory,
whether local attention was used). Stderr: progress lines, then one human-readable line.

Random weights cost what trained weights cost per frame (same shapes, same kernels), except
greedy decoding, which takes one step per emitted token: the random ASR joint is calibrated
to a token rate first (see `calibrate_emission`), and the JSON reports the tokens and words
emitted per audio minute so the remaining difference can be judged.

    python bench/gpu_pipeline.py                                  # 3 x 60 min on cuda
    python bench/gpu_pipeline.py --device cpu --minutes 0.5 --small --episodes 1   # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONVERSATION_WAV = ROOT / "tests" / "fixtures" / "speech" / "conversation.wav"
SAMPLE_RATE = 16_000
TDT_DURATIONS = [0, 1, 2, 3, 4]
# Default emission target for the random ASR model: an assumption, not a measurement — about
# 150 spoken words a minute at ~1.3 pieces per word for a 1k-piece English BPE vocabulary.
TOKENS_PER_MINUTE = 200.0
CALIBRATION_SECONDS = 30.0
BIAS_LIMIT = 64.0  # far beyond the spread of random logits: at ±64 the blank always / never wins
# What `speech.fetch` reads of the settings; a namespace keeps pydantic-settings (and a
# database URL) out of a benchmark that stores nothing. Large enough for hours of WAV; private
# addresses allowed because the episodes are served from 127.0.0.1.
FETCH_SETTINGS = SimpleNamespace(download_max_bytes=8_000_000_000, download_timeout_seconds=120.0,
                                 allow_private_addresses=True, wayback_url="https://web.archive.org")


@dataclass(frozen=True)
class Sizes:
    """Architecture sizes of the two models (full: the published checkpoints' shapes)."""

    asr_features: int = 128
    asr_layers: int = 24
    asr_d_model: int = 1024
    asr_heads: int = 8
    asr_ff_expansion: int = 4
    asr_conv_channels: int = 256
    asr_conv_kernel: int = 9
    pred_hidden: int = 640
    pred_layers: int = 2
    joint_hidden: int = 640
    vocab_size: int = 1024
    diar_features: int = 80
    diar_layers: int = 17
    diar_d_model: int = 512
    diar_heads: int = 8
    diar_ff_expansion: int = 4
    diar_conv_channels: int = 256
    tf_layers: int = 18
    tf_hidden: int = 192
    tf_inner: int = 768
    tf_heads: int = 8


FULL = Sizes()
# Small enough to build, save, load and run in seconds on two CPU cores (the smoke test).
SMALL = Sizes(
    asr_features=64, asr_layers=2, asr_d_model=64, asr_heads=2, asr_ff_expansion=2, asr_conv_channels=32,
    pred_hidden=64, pred_layers=1, joint_hidden=64, vocab_size=128,
    diar_features=64, diar_layers=2, diar_d_model=64, diar_heads=2, diar_ff_expansion=2,
    diar_conv_channels=32, tf_layers=2, tf_hidden=64, tf_inner=128, tf_heads=2,
)


# --- model configs: the tiny builders of scripts/make_tiny_models.py, resized --------------------

def load_tiny_builders() -> ModuleType:
    """scripts/make_tiny_models.py as a module (scripts/ is not a package)."""
    path = ROOT / "scripts" / "make_tiny_models.py"
    spec = importlib.util.spec_from_file_location("make_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def sized_encoder(tiny: ModuleType, features: int, d_model: int, layers: int, heads: int,
                  ff_expansion: int, conv_channels: int, kernel: int = 9) -> dict:
    """A FastConformer encoder config: the tiny builder's, with full attention and these sizes."""
    encoder = tiny._encoder(d_model, features, context=-1, kernel=kernel)
    encoder.update(n_layers=layers, n_heads=heads, ff_expansion_factor=ff_expansion,
                   subsampling_conv_channels=conv_channels)
    return encoder


def tdt_asr_config(tiny: ModuleType, tokenizer_dir: Path, sizes: Sizes) -> dict:
    """Parakeet-TDT's layout: FastConformer + 2-layer LSTM prediction net + TDT joint and decoding.

    TDT = the joint predicts, besides the token, how many frames to skip (`durations`):
    `num_extra_outputs` adds those logits; decoding needs `model_type: tdt` and the durations.
    The `tdt` loss is only constructed (its kernel is CUDA-only, but nothing trains here).
    """
    cfg = tiny.asr_config(tokenizer_dir)
    cfg["model_defaults"] = {"enc_hidden": sizes.asr_d_model, "pred_hidden": sizes.pred_hidden,
                             "joint_hidden": sizes.joint_hidden}
    cfg["preprocessor"] = tiny._preprocessor(sizes.asr_features)
    cfg["encoder"] = sized_encoder(tiny, sizes.asr_features, sizes.asr_d_model, sizes.asr_layers, sizes.asr_heads,
                                   sizes.asr_ff_expansion, sizes.asr_conv_channels, sizes.asr_conv_kernel)
    cfg["decoder"]["prednet"].update(pred_hidden=sizes.pred_hidden, pred_rnn_layers=sizes.pred_layers)
    cfg["joint"]["jointnet"]["joint_hidden"] = sizes.joint_hidden
    cfg["joint"]["num_extra_outputs"] = len(TDT_DURATIONS)
    cfg["decoding"] = {"strategy": "greedy_batch", "model_type": "tdt", "durations": TDT_DURATIONS,
                       "greedy": {"max_symbols": 10}}
    cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0,
                                                      "durations": TDT_DURATIONS, "sigma": 0.02, "omega": 0.1}}
    return cfg


def sortformer_config(tiny: ModuleType, sizes: Sizes) -> dict:
    """The streaming Sortformer 4spk-v2 layout at `sizes`."""
    cfg = tiny.diar_config()
    cfg["model_defaults"] = {"fc_d_model": sizes.diar_d_model, "tf_d_model": sizes.tf_hidden}
    cfg["preprocessor"] = {**tiny._preprocessor(sizes.diar_features), "pad_to": 0}
    cfg["encoder"] = sized_encoder(tiny, sizes.diar_features, sizes.diar_d_model, sizes.diar_layers,
                                   sizes.diar_heads, sizes.diar_ff_expansion, sizes.diar_conv_channels)
    cfg["sortformer_modules"].update(fc_d_model=sizes.diar_d_model, tf_d_model=sizes.tf_hidden)
    cfg["transformer_encoder"].update(num_layers=sizes.tf_layers, hidden_size=sizes.tf_hidden,
                                      inner_size=sizes.tf_inner, num_attention_heads=sizes.tf_heads)
    return cfg


def tokenizer_text(words: int = 40_000, seed: int = 0) -> list[str]:
    """Pseudo-English made of random syllables: enough distinct pieces for a ~1k BPE vocabulary."""
    rng = random.Random(seed)
    onsets = ["", "b", "br", "ch", "d", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pl", "r",
              "s", "sh", "st", "t", "th", "tr", "v", "w", "y", "z"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "ng", "ck", "l", "m", "nd", "st"]
    lexicon = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                       for _ in range(rng.choice((1, 1, 2, 2, 3)))) for _ in range(5_000)]
    tokens = [rng.choice(lexicon) for _ in range(words)]
    return [" ".join(tokens[i:i + 12]) for i in range(0, len(tokens), 12)]


def count_tokens(model: Any, samples: np.ndarray) -> int:
    """Tokens the ASR model's greedy decoding emits for `samples`.

    With timestamps, as `SpeechModels.transcribe` asks: NeMo rebuilds its decoder when that flag changes.
    """
    hypotheses = model.transcribe([samples], batch_size=1, timestamps=True, verbose=False)
    hypotheses = hypotheses[0] if isinstance(hypotheses, tuple) else hypotheses
    return len(hypotheses[0].y_sequence)


def calibrate_emission(models: Any, episode_seconds: float, tokens_per_minute: float, steps: int = 8) -> dict:
    """Bias the loaded ASR model's blank logit so greedy decoding emits about `tokens_per_minute`.

    Why: greedy TDT decoding runs one decoder step per emitted token (and per skipped span),
    and a random joint emits at a rate unrelated to speech (seen on CPU: thousands a minute
    from the tiny sizes, up to `max_symbols` per frame; ~190 from the full sizes, every step a
    token that skips the longest duration), so transcribe time would measure a decoding loop a
    trained model never runs. The rate swings steeply with the bias and with the encoder's
    attention mode, so it is measured on the loaded model, on the device, in the attention
    mode the episodes will get: bracket, then bisect, each step one `transcribe` of up to
    `CALIBRATION_SECONDS` of the synthetic speech.
    """
    import torch

    from podcastpile.speech.nemo_models import SpeechModels

    loaded = models.asr("en")
    SpeechModels._set_attention(loaded, local=episode_seconds > models.local_attention_above_seconds)
    model = loaded.model
    seconds = min(CALIBRATION_SECONDS, episode_seconds)
    samples = speech_like(seconds)
    blank = model.tokenizer.vocab_size  # TDT joint outputs: [tokens..., blank, durations...]
    bias = model.joint.joint_net[-1].bias
    base = float(bias[blank])

    def rate_at(offset: float) -> float:
        with torch.no_grad():
            bias[blank] = base + offset
        return count_tokens(model, samples) / (seconds / 60)

    # Bracket the answer first (how far the blank logit must move depends on the sizes), then
    # bisect. The rate can saturate below the target: with the blank never winning, every
    # decoding step emits a token and the rate is set by the predicted durations (how many
    # frames each step skips), which this bias does not touch; then keep the bias at the limit.
    low, high = -4.0, 4.0
    while rate_at(low) <= tokens_per_minute:
        if low <= -BIAS_LIMIT:
            return {"blank_bias": low, "tokens_per_minute_target": tokens_per_minute,
                    "tokens_per_minute_at_calibration": round(rate_at(low), 1), "saturated": True}
        low *= 2
    while rate_at(high) > tokens_per_minute and high < BIAS_LIMIT:
        high *= 2
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if rate_at(middle) > tokens_per_minute else (low, middle)
    offset = (low + high) / 2
    return {"blank_bias": round(offset, 3), "tokens_per_minute_target": tokens_per_minute,
            "tokens_per_minute_at_calibration": round(rate_at(offset), 1), "saturated": False}

def build_models(out_dir: Path, sizes: Sizes) -> dict[str, Any]:
    """Build both models from config with random weights, save them as .nemo; report sizes and time."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel, SortformerEncLabelModel
    from omegaconf import OmegaConf

    from podcastpile.speech.nemo_models import _quiet_nemo

    _quiet_nemo()
    tiny = load_tiny_builders()
    torch.manual_seed(0)
    started = time.perf_counter()
    tokenizer_dir = tiny.train_tokenizer(tokenizer_text(), out_dir / "tokenizer", vocab_size=sizes.vocab_size)
    built: dict[str, Any] = {}
    for kind, model_class, cfg in (
        ("asr", EncDecRNNTBPEModel, tdt_asr_config(tiny, tokenizer_dir, sizes)),
        ("diar", SortformerEncLabelModel, sortformer_config(tiny, sizes)),
    ):
        model = model_class(cfg=OmegaConf.create(cfg))
        path = out_dir / f"{kind}.nemo"
        model.save_to(str(path))
        built[kind] = {"path": str(path), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                       "file_mb": round(path.stat().st_size / 1e6, 1)}
        if kind == "asr":
            built[kind]["vocab_size"] = model.tokenizer.vocab_size
        del model  # the 0.6B model is 2.4 GB of host memory; load a fresh copy via SpeechModels
    built["build_seconds"] = round(time.perf_counter() - started, 1)
    return built


# --- audio ---------------------------------------------------------------------------------------

def speech_like(seconds: float) -> np.ndarray:
    """The committed two-voice conversation repeated to `seconds` (16 kHz mono float32)."""
    with wave.open(str(CONVERSATION_WAV)) as source:
        assert source.getframerate() == SAMPLE_RATE and source.getnchannels() == 1
        clip = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2").astype(np.float32) / 32768
    total = int(seconds * SAMPLE_RATE)
    return np.tile(clip, total // len(clip) + 1)[:total]


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV of mono 16 kHz `samples`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(SAMPLE_RATE)
        target.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _encode_mp3(samples: np.ndarray, bitrate: int) -> bytes:
    """Bare CBR MPEG frames of `samples`: no ID3 tag and no Xing header, so outputs concatenate."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        for start in range(0, len(samples), 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1152], format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def mp3_bytes(samples: np.ndarray, piece_seconds: float = 60.0, bitrate: int = 64_000) -> bytes:
    """A CBR MP3 of `samples` (periodic audio), made by encoding one piece and repeating its frames.

    Encoding an hour with LAME takes about a minute of CPU; bare MPEG frames concatenate into a
    valid stream, so one piece is encoded and repeated, and the remainder encoded on its own.
    The decode cost per second of audio — what the benchmark measures — is the same.
    """
    piece = int(piece_seconds * SAMPLE_RATE)
    whole, rest = divmod(len(samples), piece)
    body = _encode_mp3(samples[:piece], bitrate) * whole if whole else b""
    return body + (_encode_mp3(samples[whole * piece:], bitrate) if rest else b"")


# --- the run -------------------------------------------------------------------------------------

class Clock:
    """Wall time per step; waits for the GPU before each reading so kernels are billed to their step."""

    def __init__(self, device: str) -> None:
        import torch

        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """Add the time since the previous lap to `step`."""
        self._sync()
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._last
        self._last = now


def peak_gib(device: str) -> float | None:
    """torch.cuda.max_memory_allocated in GiB since the last reset (None off CUDA)."""
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def run_episode(url: str, models: Any, device: str) -> dict[str, Any]:
    """One episode through the pipeline's own chain (`podcastpile.speech.pipeline.STEPS`), timed
    per step (waiting for the GPU at each step's end), with each step's peak GPU memory."""
    from podcastpile.speech import pipeline

    clock = Clock(device)
    peaks: dict[str, float | None] = {}

    def measured(step: Any, episode: Any, models: Any) -> Any:
        if step.name == "quality":
            return episode  # CPU work meant to run beside the GPU stages: bench/quality_bench.py
        reset_peak(device)
        clock.lap("load")  # anything between steps (model loading) is not a step's time
        episode = step(episode, models)
        clock.lap(step.name)
        if step.needs_models:
            peaks[step.name] = peak_gib(device)
        return episode

    with pipeline.fetch(url, FETCH_SETTINGS) as downloaded:
        clock.lap("download")
        episode = pipeline.EpisodeWork(downloaded, language="en")
        result = pipeline.run_chain(episode, models, runner=measured)
    clock.seconds.pop("load", None)
    asr = models.asr("en")
    transcript = episode.transcript
    assert transcript is not None
    return {
        "audio_seconds": result.duration, "seconds": {k: round(v, 3) for k, v in clock.seconds.items()},
        "peak_gpu_gib": peaks, "local_attention": asr.local_attention,
        "tokens": len(asr.model.tokenizer.text_to_ids(transcript.text)) if transcript.text else 0,
        "words": len(transcript.words), "turns": len(result.turns), "speakers": result.num_speakers,
        "audio_format": result.audio_format, "audio_bytes": result.audio_bytes,
    }


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over episodes: throughput, seconds and share per step, emission rates."""
    audio = sum(e["audio_seconds"] for e in episodes)
    steps = ("download", "decode", "diarize", "transcribe", "merge")
    seconds = {s: sum(e["seconds"][s] for e in episodes) for s in steps}
    wall = sum(seconds.values())
    share = {s: seconds[s] / wall for s in steps}
    minutes = audio / 60
    return {
        "audio_seconds": round(audio, 1),
        "wall_seconds": round(wall, 2),
        "audio_seconds_per_second": round(audio / wall, 1),
        "step_seconds": {s: round(v, 2) for s, v in seconds.items()},
        "share": {
            "download_decode": round(share["download"] + share["decode"], 3),
            "diarize": round(share["diarize"], 3),
            "transcribe": round(share["transcribe"], 3),
            "merge": round(share["merge"], 3),
        },
        "audio_seconds_per_second_by_step": {s: round(audio / v, 1) if v > 0 else None for s, v in seconds.items()},
        "tokens_per_audio_minute": round(sum(e["tokens"] for e in episodes) / minutes, 1),
        "words_per_audio_minute": round(sum(e["words"] for e in episodes) / minutes, 1),
    }


def environment(device: str) -> dict[str, Any]:
    """What ran it: torch/NeMo versions and the GPU's name."""
    import nemo
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "nemo": nemo.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1)
    else:
        info["gpu"] = None
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes in the batch (default 3)")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of each episode (default 60)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="tiny model sizes (CPU smoke test)")
    parser.add_argument("--format", choices=["mp3", "wav"], default="mp3", help="how episodes are served")
    parser.add_argument("--tokens-per-minute", type=float, default=TOKENS_PER_MINUTE,
                        help="calibrate the random ASR model to emit about this many tokens per audio "
                             "minute (default %(default)g; 0 = leave the random joint as built)")
    parser.add_argument("--local-attention-above", type=float, default=None, metavar="SECONDS",
                        help="override SpeechModels' threshold for local attention (default: the project's)")
    return parser.parse_args(argv)


def say(message: str) -> None:
    """Progress on stderr, flushed: a run stopped at a time limit still shows how far it got."""
    print(message, file=sys.stderr, flush=True)


def episode_body(minutes: float, audio_format: str) -> tuple[bytes, str]:
    """The bytes every episode URL serves, and their Content-Type."""
    samples = speech_like(minutes * 60)
    if audio_format == "mp3":
        return mp3_bytes(samples), "audio/mpeg"
    return wav_bytes(samples), "audio/wav"


def load_speech_models(built: dict[str, Any], args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The project's `SpeechModels` over the built .nemo files, both loaded (and warmed up) on the device."""
    from podcastpile.speech.nemo_models import SpeechModels

    threshold = {} if args.local_attention_above is None else {
        "local_attention_above_seconds": args.local_attention_above}
    models = SpeechModels(diar_model=built["diar"]["path"], asr_model=built["asr"]["path"],
                          asr_model_multilingual=built["asr"]["path"], device=args.device, **threshold)
    reset_peak(args.device)
    started = time.perf_counter()
    models.diarizer()
    models.asr("en")
    return models, {"load_seconds": round(time.perf_counter() - started, 1),
                    "local_attention_above_seconds": models.local_attention_above_seconds,
                    "peak_gpu_gib_load": peak_gib(args.device)}


def human_line(report: dict[str, Any]) -> str:
    """One sentence with the headline numbers."""
    share = report["share"]
    return (f"{report['audio_seconds_per_second']:.1f} audio s per wall s on {report['gpu'] or report['device']} "
            f"({report['episodes']} x {report['minutes_each']:g} min, {report['sizes']} models, random weights); "
            f"download+decode {share['download_decode']:.0%}, diarize {share['diarize']:.0%}, "
            f"transcribe {share['transcribe']:.0%}, merge {share['merge']:.0%}; "
            f"peak GPU {report['peak_gpu_gib']} GiB; local attention {report['local_attention_used']}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, load, calibrate, then run the episodes; the whole report."""
    from tests.loopback import LoopbackServer, Reply

    sizes = SMALL if args.small else FULL
    body, content_type = episode_body(args.minutes, args.format)
    report: dict[str, Any] = {**environment(args.device), "sizes": "small" if args.small else "full",
                              "weights": "random", "episodes": args.episodes, "minutes_each": args.minutes,
                              "audio_format": args.format, "size_config": asdict(sizes)}
    with tempfile.TemporaryDirectory(prefix="ppgpu-") as workdir, \
            LoopbackServer({"/ep/*": lambda _: Reply(200, body, {"Content-Type": content_type})}) as server:
        report["models"] = build_models(Path(workdir), sizes)
        say(f"built: {json.dumps(report['models'])}")
        models, loading = load_speech_models(report["models"], args)
        report.update(loading)
        say(f"loaded: {json.dumps(loading)}")
        if args.tokens_per_minute > 0:
            started = time.perf_counter()
            report["calibration"] = calibrate_emission(models, args.minutes * 60, args.tokens_per_minute)
            report["calibration"]["seconds"] = round(time.perf_counter() - started, 1)
            say(f"calibrated: {json.dumps(report['calibration'])}")
        episodes = []
        for index in range(args.episodes):
            episodes.append(run_episode(server.url(f"/ep/{index}.{args.format}"), models, args.device))
            say(f"episode {index + 1}/{args.episodes}: {json.dumps(episodes[-1]['seconds'])}")
    report.update(summarize(episodes))
    report["local_attention_used"] = any(e["local_attention"] for e in episodes)
    report["peak_gpu_gib"] = None if not args.device.startswith("cuda") else max(
        [report["peak_gpu_gib_load"]] + [p for e in episodes for p in e["peak_gpu_gib"].values()])
    report["per_episode"] = episodes
    return report


def main(argv: list[str] | None = None) -> int:
    """Stdout: the report as one JSON line. Stderr: progress, then the human-readable line."""
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU; use --device cpu --small for a smoke test")
    report = run(args)
    print(json.dumps(report), flush=True)
    say(human_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
