"""Build the tiny NeMo models and the synthetic conversation the speech tests use.

    python scripts/make_tiny_models.py                       # full: writes tests/fixtures/speech/
    python scripts/make_tiny_models.py --quick --out /tmp/x  # a few steps, for the test of this script

What it writes into --out:
  conversation.wav   16 kHz mono, two espeak-ng voices joined with sox (three turns, A B A)
  conversation.json  the turns (speaker, start, end, text) the audio was built from
  tiny_asr.nemo      FastConformer + RNN-T (not TDT: NeMo's fast TDT loss needs CUDA), d_model 64,
                     local attention, SentencePiece BPE vocabulary, overfit on the conversation's
                     turns strung together in every order (see train_asr for why)
  tiny_diar.nemo     streaming Sortformer of the same size, overfit on the conversation's turns

Needs the Debian packages espeak-ng and sox, and the worker extra (torch, NeMo).
Training is a plain PyTorch loop over the models' own forward and loss modules, seeded,
without a Lightning trainer. The full build takes about 5 minutes on 2 CPU cores (NeMo's
CPU RNN-T loss is the slow part); --quick takes seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
FRAME_SECONDS = 0.08  # Sortformer output frame: 10 ms features x subsampling 8
GAP_SECONDS = 1.0  # silence between turns, so the turn boundaries are unambiguous

# Two espeak-ng voices far apart in pitch; speaker_0 speaks first (Sortformer labels by arrival).
VOICES = {"speaker_0": "en-us+m3", "speaker_1": "en-us+f4"}
CONVERSATION = [
    ("speaker_0", "welcome to the show today we talk about rivers"),
    ("speaker_1", "thanks for having me"),
    ("speaker_0", "let us begin"),
]
# Extra text for the tokenizer, so the vocabulary is not just the three sentences.
TOKENIZER_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "podcasts are long conversations between people",
    "speech data for training models",
]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def speak(text: str, voice: str, path: Path, speed: int = 160) -> None:
    """espeak-ng → 16 kHz mono 16-bit WAV with espeak's leading/trailing silence trimmed."""
    raw = path.with_suffix(".raw.wav")
    _run("espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text)
    _run("sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path),
         "silence", "1", "0.02", "1%", "reverse", "silence", "1", "0.02", "1%", "reverse")
    raw.unlink()


def training_sequences(turns: list[dict]) -> list[list[int]]:
    """Which turns each training example strings together: every ordering of 1, 2 or 3 turns."""
    from itertools import permutations

    indices = range(len(turns))
    return [list(order) for size in (1, 2, 3) for order in permutations(indices, size)]


def _turn_samples(wav: Path, turns: list[dict]) -> list[np.ndarray]:
    import soundfile

    samples, rate = soundfile.read(str(wav), dtype="float32")
    return [samples[int(t["start"] * rate): int(t["end"] * rate)] for t in turns]


def synthesize_conversation(out_dir: Path) -> dict:
    """Speak each turn with its voice, join with silences, write conversation.wav and .json."""
    import soundfile

    work = Path(tempfile.mkdtemp(prefix="ppsynth-"))
    try:
        pieces: list[str] = []
        turns = []
        cursor = GAP_SECONDS / 2
        silence = work / "silence.wav"
        _run("sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(silence),
             "trim", "0", str(GAP_SECONDS))
        lead = work / "lead.wav"
        _run("sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(lead),
             "trim", "0", str(GAP_SECONDS / 2))
        pieces.append(str(lead))
        for index, (speaker, text) in enumerate(CONVERSATION):
            clip = work / f"turn{index}.wav"
            speak(text, VOICES[speaker], clip)
            seconds = soundfile.info(str(clip)).duration
            turns.append({"speaker": speaker, "start": round(cursor, 3),
                          "end": round(cursor + seconds, 3), "text": text})
            cursor += seconds + GAP_SECONDS
            pieces += [str(clip), str(silence)]
        wav = out_dir / "conversation.wav"
        _run("sox", *pieces, str(wav))
        info = {"sample_rate": SAMPLE_RATE, "duration": round(soundfile.info(str(wav)).duration, 3),
                "voices": VOICES, "turns": turns}
        (out_dir / "conversation.json").write_text(json.dumps(info, indent=2) + "\n")
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 64) -> Path:
    """A SentencePiece BPE model plus the vocab.txt NeMo expects beside it."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "text.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
        bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return out_dir


def _encoder(d_model: int, features: int, context: int = -1, kernel: int = 9) -> dict:
    """A 2-layer FastConformer. `context` limits self-attention to that many frames each side."""
    return {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": features, "feat_out": -1, "n_layers": 2, "d_model": d_model,
        "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 32,
        "causal_downsampling": False, "ff_expansion_factor": 2,
        "self_attention_model": "rel_pos", "n_heads": 2, "att_context_size": [context, context],
        "att_context_style": "regular", "xscaling": True, "untie_biases": True,
        "pos_emb_max_len": 5000, "conv_kernel_size": kernel, "conv_norm_type": "batch_norm",
        "conv_context_size": None, "dropout": 0.0, "dropout_pre_encoder": 0.0,
        "dropout_emb": 0.0, "dropout_att": 0.0,
    }


def _preprocessor(features: int) -> dict:
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.025,
        "window_stride": 0.01, "window": "hann", "features": features, "n_fft": 512,
        "frame_splicing": 1, "dither": 0.0, "pad_to": 0,
    }


def asr_config(tokenizer_dir: Path) -> dict:
    """A FastConformer RNN-T BPE model of about 1 MB (parakeet's shape, scaled down)."""
    dataset = {"manifest_filepath": None, "sample_rate": SAMPLE_RATE, "batch_size": 1,
               "shuffle": False, "num_workers": 0, "pin_memory": False}
    return {
        "sample_rate": SAMPLE_RATE,
        "compute_eval_loss": False,
        "log_prediction": False,
        "model_defaults": {"enc_hidden": 64, "pred_hidden": 64, "joint_hidden": 64},
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        # transcribe() builds its own loader but reads defaults from validation_ds.
        "train_ds": dict(dataset), "validation_ds": dict(dataset), "test_ds": dict(dataset),
        "preprocessor": _preprocessor(64),
        "spec_augment": None,
        # Local attention and a short convolution bound how far the encoder can move evidence
        # in time (±~1 s), so the model's word timestamps stay near the words; with
        # full attention it learns the text but emits words seconds away from where they are said.
        "encoder": _encoder(64, 64, context=4, kernel=5),
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None, "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": 64, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.0},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": 64, "activation": "relu", "dropout": 0.0},
        },
        # A tiny model may emit a whole word burst in one frame; let greedy decoding keep it.
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 30}},
        "loss": {"loss_name": "default"},
        "optim": {"name": "adam", "lr": 1e-3},
    }


def diar_config() -> dict:
    """A streaming Sortformer of about 1 MB (the v2 layout, scaled down)."""
    dataset = {"manifest_filepath": None, "sample_rate": SAMPLE_RATE, "num_spks": 4,
               "session_len_sec": 90, "soft_label_thres": 0.5, "soft_targets": False,
               "labels": None, "batch_size": 1, "shuffle": False, "num_workers": 0,
               "validation_mode": True, "use_lhotse": False, "pin_memory": False,
               "window_stride": 0.01, "subsampling_factor": 8}
    return {
        "sample_rate": SAMPLE_RATE, "pil_weight": 0.5, "ats_weight": 0.5, "max_num_of_spks": 4,
        "streaming_mode": True,
        "model_defaults": {"fc_d_model": 64, "tf_d_model": 64},
        "train_ds": dict(dataset), "validation_ds": dict(dataset), "test_ds": dict(dataset),
        "preprocessor": {**_preprocessor(64), "pad_to": 0},
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": 4, "dropout_rate": 0.0, "fc_d_model": 64, "tf_d_model": 64,
            # very-high latency preset; the loader applies the configured preset anyway.
            "spkcache_len": 188, "fifo_len": 40, "chunk_len": 340, "spkcache_update_period": 300,
            "chunk_left_context": 1, "chunk_right_context": 40, "spkcache_sil_frames_per_spk": 3,
            "causal_attn_rate": 0.0, "causal_attn_rc": 7,
        },
        "encoder": _encoder(64, 64),
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": 2, "hidden_size": 64, "inner_size": 128, "num_attention_heads": 2,
            "attn_score_dropout": 0.0, "attn_layer_dropout": 0.0, "ffn_dropout": 0.0,
            "hidden_act": "relu", "pre_ln": False, "pre_ln_final_layer_norm": True,
        },
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None,
                 "reduction": "mean"},
        "optim": {"name": "adam", "lr": 1e-3},
    }


def _waveform(path: Path):
    import soundfile
    import torch

    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == SAMPLE_RATE, rate
    return torch.from_numpy(samples)[None, :], torch.tensor([len(samples)])


def build_asr(tokenizer_dir: Path):
    """A randomly initialised tiny RNN-T model."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    return EncDecRNNTBPEModel(cfg=OmegaConf.create(asr_config(tokenizer_dir)))


def train_asr(model, wav: Path, turns: list[dict], steps: int, log=print, check_every: int = 0) -> bool:
    """Train the RNN-T model on the conversation's turns strung together in every order.

    Why not just the conversation: an RNN-T overfit on one utterance memorises the word order
    in its prediction network and then emits words wherever it likes (seconds late, or in a
    burst at the start), so its word timestamps are useless for the merge. When turns come in
    any order, with random silences between them, it has to hear which turn starts, so words
    come out near where they are spoken. One pass of the model's own forward and RNN-T loss per step.

    With `check_every`, stop as soon as `asr_is_right` passes (checked every that many steps)
    and return whether it did; a loss near zero alone does not mean the greedy decode is right.
    """
    import random

    import torch

    rng = random.Random(1)
    clips = _turn_samples(wav, turns)
    orders = training_sequences(turns)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        order = orders[step % len(orders)] if step < len(orders) else rng.choice(orders)
        pieces = [np.zeros(int(rng.uniform(0.2, 1.0) * SAMPLE_RATE), np.float32)]
        for index in order:
            pieces += [clips[index], np.zeros(int(rng.uniform(0.6, 1.4) * SAMPLE_RATE), np.float32)]
        samples = np.concatenate(pieces)
        text = " ".join(turns[index]["text"] for index in order)
        signal, length = torch.from_numpy(samples)[None, :], torch.tensor([len(samples)])
        tokens = torch.tensor([model.tokenizer.text_to_ids(text)])
        optimizer.zero_grad()
        encoded, encoded_length = model.forward(input_signal=signal, input_signal_length=length)
        decoder, target_length, _ = model.decoder(targets=tokens, target_length=torch.tensor([tokens.shape[1]]))
        joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder)
        loss = model.loss(log_probs=joint, targets=tokens, input_lengths=encoded_length,
                          target_lengths=target_length)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"asr step {step}: loss {loss.item():.3f}")
        if check_every and (step + 1) % check_every == 0:
            model.eval()
            if asr_is_right(model, wav, turns, log):
                return True
            model.train()
    model.eval()
    return not check_every


def asr_is_right(model, wav: Path, turns: list[dict], log=print) -> bool:
    """Does the model transcribe the conversation exactly, with each word inside its own turn?

    Uses the project's own merge against the true turns, i.e. what the tests will assert.
    """
    import soundfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from podcastpile.speech.merge import merge_words
    from podcastpile.speech.result import Segment, Word

    samples, _ = soundfile.read(str(wav), dtype="float32")
    hypothesis = model.transcribe([samples], batch_size=1, timestamps=True, verbose=False)
    hypothesis = (hypothesis[0] if isinstance(hypothesis, tuple) else hypothesis)[0]
    words = [Word(word=w["word"], start=w["start"], end=w["end"]) for w in hypothesis.timestamp["word"]]
    truth = [Segment(speaker=t["speaker"], start=t["start"], end=t["end"]) for t in turns]
    got = [(turn.speaker, turn.text) for turn in merge_words(words, truth)]
    log(f"asr check: {got}")
    return got == [(t["speaker"], t["text"]) for t in turns]


def build_diar():
    """A randomly initialised tiny streaming Sortformer."""
    from nemo.collections.asr.models import SortformerEncLabelModel
    from omegaconf import OmegaConf

    return SortformerEncLabelModel(cfg=OmegaConf.create(diar_config()))


def speaker_targets(turns: list[dict], frames: int, num_speakers: int = 4):
    """Frame-level activity (frames x speakers), speakers numbered by first appearance."""
    import torch

    order: dict[str, int] = {}
    targets = torch.zeros(frames, num_speakers)
    for turn in turns:
        index = order.setdefault(turn["speaker"], len(order))
        first = int(round(turn["start"] / FRAME_SECONDS))
        last = int(round(turn["end"] / FRAME_SECONDS))
        targets[first:last, index] = 1.0
    return targets


def train_diar(model, wav: Path, turns: list[dict], steps: int, log=print) -> None:
    """Overfit the Sortformer to the conversation's turns with its own forward pass (BCE loss)."""
    import torch

    signal, length = _waveform(wav)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        preds = model.forward(audio_signal=signal, audio_signal_length=length)
        targets = speaker_targets(turns, preds.shape[1])[None]
        loss = torch.nn.functional.binary_cross_entropy(preds.clamp(1e-6, 1 - 1e-6), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"diar step {step}: loss {loss.item():.4f}")
    model.eval()


def diar_is_right(model, wav: Path, turns: list[dict], log=print) -> bool:
    """Is each true turn at least 80% covered by its speaker's segments, and at most 20% by others'?"""
    import soundfile

    samples, _ = soundfile.read(str(wav), dtype="float32")
    lines = model.diarize(audio=[samples], sample_rate=SAMPLE_RATE, batch_size=1, verbose=False)[0]
    segments = [(float(a), float(b), speaker) for a, b, speaker in (line.split() for line in lines)]
    log(f"diar check: {segments}")
    for turn in turns:
        length = turn["end"] - turn["start"]
        cover = {}
        for start, end, speaker in segments:
            overlap = max(0.0, min(end, turn["end"]) - max(start, turn["start"]))
            cover[speaker] = cover.get(speaker, 0.0) + overlap
        own = cover.pop(turn["speaker"], 0.0)
        if own < 0.8 * length or sum(cover.values()) > 0.2 * length:
            return False
    return True


def make_all(
    out_dir: Path, asr_steps: int, diar_steps: int, check_every: int = 0, log=print
) -> dict[str, Path]:
    """Synthesize the conversation, then build, train and save both models into `out_dir`."""
    import torch

    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = synthesize_conversation(out_dir)
    wav = out_dir / "conversation.wav"
    with tempfile.TemporaryDirectory(prefix="pptok-") as tok:
        tokenizer_dir = train_tokenizer([t for _, t in CONVERSATION] + TOKENIZER_TEXT, Path(tok))
        asr = build_asr(tokenizer_dir)
        if not train_asr(asr, wav, info["turns"], asr_steps, log, check_every=check_every):
            raise SystemExit(f"the ASR model did not learn the conversation in {asr_steps} steps")
        asr.save_to(str(out_dir / "tiny_asr.nemo"))
    diar = build_diar()
    train_diar(diar, wav, info["turns"], diar_steps, log)
    if check_every and not diar_is_right(diar, wav, info["turns"], log):
        raise SystemExit(f"the Sortformer did not learn the turns in {diar_steps} steps")
    diar.save_to(str(out_dir / "tiny_diar.nemo"))
    return {"asr": out_dir / "tiny_asr.nemo", "diar": out_dir / "tiny_diar.nemo", "wav": wav,
            "json": out_dir / "conversation.json"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--quick", action="store_true", help="a few steps only (tests this script)")
    parser.add_argument("--asr-steps", type=int, default=1000, help="at most; stops when right")
    parser.add_argument("--diar-steps", type=int, default=80)
    args = parser.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found; install it: apt-get install -y espeak-ng sox")
    asr_steps, diar_steps = (2, 2) if args.quick else (args.asr_steps, args.diar_steps)
    paths = make_all(args.out, asr_steps, diar_steps, check_every=0 if args.quick else 50)
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
