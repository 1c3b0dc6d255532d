"""NeMo models for one worker process: Sortformer diarization and Parakeet ASR, loaded once.

`SpeechModels` holds the models a process needs and loads each on first use, so a worker
that handles many episodes pays the load (and NeMo's 10–40 s import) once. NeMo and torch
are imported inside the loaders only: importing this module is cheap.

Model names are Hugging Face ids (`nvidia/parakeet-tdt-0.6b-v2`) or paths to `.nemo` files.
Each loaded model carries a fingerprint of its weights, recorded with every result so
results can be traced to (and invalidated by) the exact weights that made them.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from podcastpile.speech import longform
from podcastpile.speech.audio import DecodedAudio
from podcastpile.speech.result import Segment, Word

log = logging.getLogger(__name__)
# NeMo's telemetry library warns on stderr at import ("OneLogger: ... disabled", "No exporters
# were provided") on every command, --json too. Only that library's logger is raised to ERROR;
# our own warnings and NeMo's errors still show.
logging.getLogger("nv_one_logger").setLevel(logging.ERROR)

# Streaming Sortformer presets, in 80 ms frames, from the model card of
# nvidia/diar_streaming_sortformer_4spk-v2. very-high keeps speaker identity best on long audio.
LATENCY_PRESETS: dict[str, dict[str, int]] = {
    "very-high": {"chunk_len": 340, "chunk_right_context": 40, "fifo_len": 40,
                  "spkcache_update_period": 300, "spkcache_len": 188},
    "high": {"chunk_len": 124, "chunk_right_context": 1, "fifo_len": 124,
             "spkcache_update_period": 124, "spkcache_len": 188},
    "low": {"chunk_len": 6, "chunk_right_context": 7, "fifo_len": 188,
            "spkcache_update_period": 144, "spkcache_len": 188},
    "ultra-low": {"chunk_len": 3, "chunk_right_context": 1, "fifo_len": 188,
                  "spkcache_update_period": 144, "spkcache_len": 188},
}
# Local attention window (encoder frames each side) for long audio, as NVIDIA recommends for
# Parakeet: full attention needs memory quadratic in length (~20 min fits 80 GB).
LOCAL_ATTENTION_CONTEXT = [longform.LOCAL_CONTEXT, longform.LOCAL_CONTEXT]
# NeMo 3.0's `merge_float_intervals` (which builds the diarizer's output lines) scales times by
# 1e5 and casts them to int32: every segment after 2**31 / 1e5 s (5 h 57 m 54.8 s) is dropped.
NEMO_INTERVAL_LIMIT_SECONDS = 2**31 / 10**5
# The diarizer's features are computed this much audio at a time when the episode is longer
# (see `longform.chunked_features`): its STFT temporaries stay ~0.25 GB.
DIAR_FEATURE_CHUNK_SECONDS = 300.0
WARM_UP_SAMPLES = 16_000  # one second at the models' 16 kHz


class ModelLoadError(RuntimeError):
    """A model could not be loaded (bad name or path, no network for a download, bad file).

    Not an episode failure: the worker cannot process anything until its settings are fixed.
    """


class MissingExtra(ModelLoadError):
    """The speech models' packages are not installed (the `worker` extra)."""


# What the `worker` extra installs and the speech chain imports (torch and NeMo for the models,
# PyAV for decoding, the quality models' runtime and wheels). The core install leaves them out: they are gigabytes.
WORKER_EXTRA_MODULES = ("torch", "nemo", "av", "onnxruntime", "speechmos", "silero_vad", "pyloudnorm")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


@cache  # once found, the packages stay installed: every episode asks, only the first looks
def require_worker_extra() -> None:
    """Raise `MissingExtra`, one line naming the extra to install, unless its packages are there."""
    missing = [module for module in WORKER_EXTRA_MODULES if not _installed(module)]
    if missing:
        raise MissingExtra(
            f"{', '.join(missing)} not installed: the speech models need the `worker` extra: "
            "pip install torch==2.13.0, then pip install 'podcastpile[worker]'"
        )


def pick_device(setting: str = "auto") -> str:
    """`auto` → `cuda` when torch sees a GPU, else `cpu`; anything else is used as given."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_fingerprint(model: Any) -> str:
    """`sha256:<16 hex>` over every tensor of the state dict (name, dtype, shape, bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def is_english(language: str | None) -> bool:
    """No language, or any English tag (`en`, `en-US`, `en_gb`, `eng`), means English."""
    if not language:
        return True
    tag = language.strip().lower().replace("_", "-")
    return tag in ("en", "eng", "english") or tag.startswith("en-")


@cache
def _skip_final_collections() -> None:
    """Once NeMo is loaded, the interpreter's teardown spends 1.8-3.6 s in its last garbage
    collections over NeMo's millions of objects (measured with py-spy: `gc_collect_main`), which a
    stopping batch, a finished `ppcli process` and every flow-run process wait for. Freezing
    the heap at exit makes those collections skip it; everything is still released as usual
    (atexit handlers, flushed streams, modules cleared by reference counting)."""
    atexit.register(gc.freeze)


def _quiet_nemo() -> None:
    """NeMo logs a wall of warnings per load and call; keep errors only."""
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)


@contextmanager
def _no_streaming_progress_bar() -> Iterator[None]:
    """Silence the Sortformer's "Streaming Steps" tqdm bar for the duration of the block.

    NeMo 3.0's streaming forward draws it with `tqdm(..., disable=self.training)`, ignoring
    diarize(verbose=False), and an explicit `disable` argument beats tqdm's TQDM_DISABLE, so
    the only switch is the module's own `tqdm` name: swapped here for one that forces
    `disable=True`, and put back after. If another thread already swapped it, leave it to that one.
    """
    from nemo.collections.asr.models import sortformer_diar_models as module

    original = module.tqdm
    if getattr(original, "_podcastpile_quiet", False):
        yield
        return

    def quiet_tqdm(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "disable": True})

    quiet_tqdm._podcastpile_quiet = True  # type: ignore[attr-defined]
    module.tqdm = quiet_tqdm
    try:
        yield
    finally:
        module.tqdm = original


def load_nemo_model(model_class: Any, name: str, device: str) -> Any:
    """`restore_from` a `.nemo` path or `from_pretrained` a Hugging Face id, on `device`, in eval mode."""
    import torch

    if name.endswith(".nemo") or Path(name).is_file():
        if not Path(name).is_file():
            raise FileNotFoundError(f"model file not found: {name}")
        model = model_class.restore_from(name, map_location=torch.device(device))
    else:
        model = model_class.from_pretrained(name, map_location=torch.device(device))
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A model with the name it was loaded by and its weights' fingerprint."""

    name: str
    fingerprint: str
    model: Any
    # ASR only: whether the encoder is currently switched to local attention.
    local_attention: bool = False
    full_attention: tuple[str, list[int], int] | None = None


@dataclass
class Transcript:
    """One ASR pass: the words with times, the text, and which model made them."""

    words: list[Word]
    text: str
    language: str
    model: str
    fingerprint: str
    local_attention: bool = False  # how it was run (see `longform.plan_asr`)
    windows: int = 1


@dataclass
class Diarization:
    """Raw speaker segments and which model made them."""

    segments: list[Segment]
    model: str
    fingerprint: str


@dataclass
class SpeechModels:
    """The models one process uses, each loaded on first use and then reused.

    Thread-safe loading (a lock), but run one episode at a time per instance: NeMo models
    keep state (attention mode, streaming parameters) between calls.
    """

    diar_model: str = "nvidia/diar_streaming_sortformer_4spk-v2"
    diar_latency: str = "very-high"
    asr_model: str = "nvidia/parakeet-tdt-0.6b-v2"
    asr_model_multilingual: str = "nvidia/parakeet-tdt-0.6b-v3"
    local_attention_above_seconds: float = 1200.0
    device: str = "auto"
    quiet: bool = True
    # Bytes one ASR pass may use; None: measured from the device before each episode.
    asr_memory_budget_bytes: int | None = None
    asr_window_overlap_seconds: float = longform.OVERLAP_SECONDS
    diar_feature_chunk_seconds: float = DIAR_FEATURE_CHUNK_SECONDS
    _loaded: dict[tuple[str, str], LoadedModel] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "SpeechModels":
        """Build from `podcastpile.config.Settings` (model names, latency, threshold, device)."""
        values = {
            "diar_model": settings.diar_model,
            "diar_latency": str(getattr(settings.diar_latency, "value", settings.diar_latency)),
            "asr_model": settings.asr_model,
            "asr_model_multilingual": settings.asr_model_multilingual,
            "local_attention_above_seconds": settings.local_attention_above_seconds,
            "device": settings.device,
        }
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.diar_latency not in LATENCY_PRESETS:
            raise ValueError(f"diar_latency {self.diar_latency!r} is not one of {', '.join(LATENCY_PRESETS)}")

    # --- loading ---------------------------------------------------------------------------------

    def _load(self, kind: str, name: str) -> LoadedModel:
        with self._lock:
            key = (kind, name)
            if key not in self._loaded:
                self._loaded[key] = self._load_now(kind, name)
            return self._loaded[key]

    def _load_now(self, kind: str, name: str) -> LoadedModel:
        require_worker_extra()
        if kind == "asr":
            from nemo.collections.asr.models import ASRModel as model_class
        else:
            from nemo.collections.asr.models import SortformerEncLabelModel as model_class
        _skip_final_collections()
        if self.quiet:
            _quiet_nemo()
        device = pick_device(self.device)
        log.info("loading %s model %s on %s", kind, name, device)
        try:
            model = load_nemo_model(model_class, name, device)
        except Exception as error:  # NeMo/HF raise many kinds; the caller needs one clear line
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ModelLoadError(
                f"cannot load {kind} model {name!r} on {device}: {type(error).__name__}: {first_line}"
            ) from error
        loaded = LoadedModel(name=name, fingerprint=weights_fingerprint(model), model=model)
        # One second of silence through the model: the first call sets up decoding and data
        # loading (seconds), which would otherwise be billed to the first episode's RTF.
        warm_up = np.zeros(WARM_UP_SAMPLES, dtype=np.float32)
        if kind == "diar":
            apply_latency_preset(model, self.diar_latency)
            with self._progress_bars_off():
                model.diarize(audio=[warm_up], sample_rate=16_000, batch_size=1, verbose=False)
        else:
            encoder = model.cfg.encoder
            loaded.full_attention = (
                encoder.get("self_attention_model", "rel_pos"),
                list(encoder.get("att_context_size", [-1, -1])),
                int(encoder.get("subsampling_conv_chunking_factor", 1)),
            )
            model.transcribe([warm_up], batch_size=1, timestamps=True, verbose=False)
        return loaded

    def _progress_bars_off(self) -> AbstractContextManager[None]:
        """No Sortformer progress bar on stderr when `quiet` (a no-op context otherwise)."""
        return _no_streaming_progress_bar() if self.quiet else nullcontext()

    @property
    def loaded_count(self) -> int:
        """How many models this holder has loaded so far (each is loaded once)."""
        return len(self._loaded)

    def diarizer(self) -> LoadedModel:
        """The Sortformer model (loaded on first call)."""
        return self._load("diar", self.diar_model)

    def asr(self, language: str | None = None) -> LoadedModel:
        """The ASR model for `language`: English model for English or unknown, else the multilingual one."""
        return self._load("asr", self.asr_model if is_english(language) else self.asr_model_multilingual)

    # --- inference -------------------------------------------------------------------------------

    def diarize(self, audio: DecodedAudio) -> Diarization:
        """Speaker segments of the whole episode, sorted by start."""
        loaded = self.diarizer()
        chunked = audio.duration > self.diar_feature_chunk_seconds
        with (
            self._progress_bars_off(),
            _features_in_chunks(loaded.model, self.diar_feature_chunk_seconds, chunked),
            _wide_interval_merge(audio.duration >= NEMO_INTERVAL_LIMIT_SECONDS),
        ):
            output = loaded.model.diarize(
                audio=[audio.samples], sample_rate=audio.sample_rate, batch_size=1, verbose=False
            )
        segments = sorted(parse_diarization_lines(output[0]), key=lambda s: (s.start, s.end, s.speaker))
        return Diarization(segments=segments, model=loaded.name, fingerprint=loaded.fingerprint)

    def transcribe(self, audio: DecodedAudio, language: str | None = None) -> Transcript:
        """One ASR pass over the whole episode with word timestamps, in memory bounded by the device.

        `asr_plan` picks full attention in one pass when it fits the memory budget (and the
        episode is no longer than `local_attention_above_seconds`), else local attention in
        overlapping windows whose words are stitched at pauses (see `podcastpile.speech.longform`).
        """
        loaded = self.asr(language)
        plan = self.asr_plan(audio.duration, language)
        self._set_attention(loaded, local=plan.local)
        if len(plan.windows) == 1:
            words, text = _recognise(loaded.model, audio.samples)
        else:
            log.info("transcribing %.0f s in %d windows of %.0f s (local attention %s)",
                     audio.duration, len(plan.windows), plan.window_seconds, plan.local)
            words = longform.run_windows(
                audio.samples, audio.sample_rate, plan.windows, lambda piece: _recognise(loaded.model, piece)[0]
            )
            text = " ".join(word.word for word in words)
        return Transcript(
            words=words, text=text, language=language or "en", model=loaded.name,
            fingerprint=loaded.fingerprint, local_attention=plan.local, windows=len(plan.windows),
        )

    def asr_plan(self, seconds: float, language: str | None = None) -> longform.AsrPlan:
        """How `transcribe` will run `seconds` of audio on this device (loads the model if needed)."""
        loaded = self.asr(language)
        budget = self.asr_memory_budget_bytes
        if budget is None:
            budget = longform.memory_budget_bytes(str(next(loaded.model.parameters()).device))
        return longform.plan_asr(
            seconds, longform.EncoderShape.of(loaded.model), budget,
            full_attention_limit=self.local_attention_above_seconds, overlap=self.asr_window_overlap_seconds,
        )

    @staticmethod
    def _set_attention(loaded: LoadedModel, local: bool) -> None:
        if local == loaded.local_attention:
            return
        model = loaded.model
        if local:
            trained = (loaded.full_attention or ("rel_pos", [-1, -1], 1))[1]
            model.change_attention_model("rel_pos_local_attn", local_context(trained))
            model.change_subsampling_conv_chunking_factor(1)  # 1 = chunk automatically
        else:
            attention, context, chunking = loaded.full_attention or ("rel_pos", [-1, -1], 1)
            model.change_attention_model(attention, context)
            model.change_subsampling_conv_chunking_factor(chunking)
        loaded.local_attention = local


def local_context(trained: list[int]) -> list[int]:
    """The local attention window for a model whose configured context is `trained`.

    NVIDIA's [128, 128] for a model trained with full attention ([-1, -1], as Parakeet); a model
    trained with a narrower finite context keeps its own, which local attention then computes
    exactly as before in linear memory. Widening a narrow context changes what the model sees
    (the tiny test model, trained at [4, 4], loses whole turns at [128, 128]).
    """
    return [side if 0 <= side < limit else limit for side, limit in zip(trained, LOCAL_ATTENTION_CONTEXT)]


def _recognise(model: Any, samples: np.ndarray) -> tuple[list[Word], str]:
    """Words (times from the start of `samples`) and text of one `transcribe` call."""
    hypotheses = model.transcribe(
        [samples.astype(np.float32, copy=False)], batch_size=1, timestamps=True, verbose=False
    )
    if isinstance(hypotheses, tuple):  # some decoders return (best, all)
        hypotheses = hypotheses[0]
    hypothesis = hypotheses[0]
    words = [
        Word(word=str(item["word"]), start=round(float(item["start"]), 3), end=round(float(item["end"]), 3))
        for item in (hypothesis.timestamp or {}).get("word", [])
    ]
    return words, hypothesis.text or ""


def merge_float_intervals(ranges: list[list[float]], decimals: int = 5, margin: int = 2) -> list[list[float]]:
    """NeMo's `speaker_utils.merge_float_intervals` with Python integers instead of int32 tensors.

    Same rule (ranges scaled to integers, starts shifted by `margin` so that touching ranges
    stay apart, then NeMo's own `merge_int_intervals`, which makes int64 tensors from Python
    ints), without the overflow that drops every range past 21474.8 s.
    """
    from nemo.collections.asr.parts.utils.speaker_utils import merge_int_intervals

    scale = 10**decimals
    scaled = [[round(start * scale) + margin, round(end * scale)] for start, end in ranges]
    merged = merge_int_intervals([pair for pair in scaled if pair[0] < pair[1]])
    return [[round((start - margin) / scale, decimals), round(end / scale, decimals)] for start, end in merged]


@contextmanager
def _wide_interval_merge(enabled: bool = True) -> Iterator[None]:
    """While inside, NeMo's diarizer output uses `merge_float_intervals` above (no int32 overflow).

    `generate_diarization_output_lines` looks the function up in its module at call time, so
    the module's name is swapped and put back after. Only for audio past the overflow point:
    shorter episodes keep NeMo's exact output. If another thread already swapped it, leave it.
    """
    from nemo.collections.asr.parts.utils import speaker_utils

    original = speaker_utils.merge_float_intervals
    if not enabled or original is merge_float_intervals:
        yield
        return
    speaker_utils.merge_float_intervals = merge_float_intervals
    try:
        yield
    finally:
        speaker_utils.merge_float_intervals = original


@contextmanager
def _features_in_chunks(model: Any, chunk_seconds: float, enabled: bool = True) -> Iterator[None]:
    """While inside, a streaming Sortformer computes its features `chunk_seconds` at a time.

    NeMo's `process_signal` runs the preprocessor over the whole file at once (an STFT of 6 h
    is ~4.4 GB); the instance's method is shadowed by one that calls `longform.chunked_features`
    (same features) and removed after. Only in streaming mode, where NeMo's own version does
    nothing else (offline mode also rescales by the file's peak).
    """
    if not enabled or not getattr(model, "streaming_mode", False):
        yield
        return
    original = model.process_signal

    def process_signal(audio_signal: Any, audio_signal_length: Any) -> Any:
        signal, length = audio_signal.to(model.device), audio_signal_length.to(model.device)
        result = longform.chunked_features(model.preprocessor, signal, length, chunk_seconds)
        return original(audio_signal, audio_signal_length) if result is None else result

    model.process_signal = process_signal
    try:
        yield
    finally:
        del model.process_signal


def apply_latency_preset(model: Any, preset: str) -> None:
    """Set a streaming preset on a Sortformer's `sortformer_modules` and check it is valid."""
    modules = model.sortformer_modules
    for key, value in LATENCY_PRESETS[preset].items():
        setattr(modules, key, value)
    modules._check_streaming_parameters()


def parse_diarization_lines(lines: list[Any]) -> list[Segment]:
    """Sortformer's `"start end speaker_N"` lines (or lists) as `Segment`s."""
    segments = []
    for line in lines:
        start, end, speaker = line.split() if isinstance(line, str) else line
        segments.append(Segment(speaker=str(speaker), start=float(start), end=float(end)))
    return segments
