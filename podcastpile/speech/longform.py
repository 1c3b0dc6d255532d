"""Long audio in bounded memory: how to run ASR on an episode of any length, and the
diarizer's features computed a piece at a time.

ASR. Full self-attention needs memory quadratic in length; NVIDIA's remedy for long audio is
local attention (`rel_pos_local_attn`, 128 frames each side) with chunked subsampling, which
is linear, but still linear in the *whole* episode: the first subsampling convolution alone
keeps channels × time × mel/2 floats (for Parakeet 0.6B about 6.5 MB per audio second, so 6 h
does not fit an 80 GB card). So the plan (`plan_asr`) estimates the memory of one pass from
the encoder's shape and a byte budget taken from the device:

  1. the whole episode in one full-attention pass, if that fits (short audio: unchanged);
  2. else local attention, in windows as long as fit the budget (one window if the episode
     fits), overlapping by `overlap` seconds; `stitch` keeps each window's words up to a cut
     in a pause in the middle of the overlap, so every kept word had context on both sides.

Memory is then at most the budget plus the decoded samples and the words: bounded by a
linear function of length, whatever the length. The estimate's constants are set so that it
reproduces NVIDIA's published limits for Parakeet 0.6B on an 80 GB GPU (full attention
~20-24 min, local attention ~3 h) and the measured tiny-model curve on CPU (bench/README.md).

Diarization. Streaming Sortformer keeps a bounded speaker cache, but NeMo computes the mel
features of the whole file in one call first: an STFT of 6 h is ~4.4 GB of complex numbers.
`chunked_features` computes the same features a piece at a time (with STFT context at the
seams and per-feature normalisation over the whole file in a second pass), so only the
features themselves (~0.5 GB for 6 h) are held.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from podcastpile.speech.result import Word

FLOAT_BYTES = 4
# Live copies of the T×T attention scores in one rel_pos layer (scores ac and bd, bd before
# its shift is T×2T, softmax output, mask): measured ~7 on the tiny model on CPU.
ATTENTION_COPIES = 7
# Per-frame activations held across one conformer layer: the FF expansion plus residual,
# norm, conv module and attention projections.
ENCODER_COPIES = 4
LOCAL_CONTEXT = 128  # encoder frames each side, NVIDIA's setting for Parakeet on long audio
LOCAL_ATTENTION_COPIES = 3
STFT_COPIES = 2  # complex spectrogram, then its magnitude
CONV_COPIES = 2  # first subsampling conv's output and its activation

CUDA_BUDGET_SHARE = 0.5  # of the GPU memory free after the models are loaded
# On CPU a bigger window buys no throughput (compute bound) and the machine runs other
# processes, so a window is kept small: 1 GiB, or a quarter of the available memory if less.
CPU_BUDGET_BYTES = 1 << 30
CPU_BUDGET_SHARE = 0.25
OVERLAP_SECONDS = 16.0  # 8 s of context each side of a cut: longer than any word or pause
MIN_WINDOW_SECONDS = 60.0  # below this a budget is too small to be worth windows: use it anyway


@dataclass(frozen=True)
class EncoderShape:
    """What sets a FastConformer ASR pass's memory, read from the model's config."""

    heads: int
    d_model: int
    ff_expansion: int
    conv_channels: int
    mels: int
    n_fft: int
    hop_seconds: float
    subsampling: int

    @classmethod
    def of(cls, model: Any) -> "EncoderShape":
        """The shape of a NeMo ASR model (`cfg.encoder`, `cfg.preprocessor`)."""
        encoder, features = model.cfg.encoder, model.cfg.preprocessor
        window = float(features.get("window_size", 0.025))
        rate = int(features.get("sample_rate", 16000))
        n_fft = features.get("n_fft") or 2 ** math.ceil(math.log2(window * rate))
        return cls(
            heads=int(encoder.get("n_heads", 8)), d_model=int(encoder.get("d_model", 512)),
            ff_expansion=int(encoder.get("ff_expansion_factor", 4)),
            conv_channels=int(encoder.get("subsampling_conv_channels", 256) or encoder.get("d_model", 512)),
            mels=int(features.get("features", 80)), n_fft=int(n_fft),
            hop_seconds=float(features.get("window_stride", 0.01)),
            subsampling=int(encoder.get("subsampling_factor", 8)),
        )

    def frames(self, seconds: float) -> float:
        """Encoder frames for `seconds` of audio."""
        return seconds / (self.hop_seconds * self.subsampling)

    def linear_bytes_per_second(self, local: bool) -> float:
        """Memory per audio second of everything but full attention's T×T scores."""
        mel_frames = 1.0 / self.hop_seconds
        stft = (self.n_fft // 2 + 1) * mel_frames * 2 * FLOAT_BYTES * STFT_COPIES
        conv = self.conv_channels * (mel_frames / 2) * (self.mels / 2) * FLOAT_BYTES * CONV_COPIES
        encoder = self.frames(1.0) * self.d_model * FLOAT_BYTES * (self.ff_expansion + ENCODER_COPIES)
        attention = (self.frames(1.0) * self.heads * (2 * LOCAL_CONTEXT + 1) * FLOAT_BYTES
                     * LOCAL_ATTENTION_COPIES if local else 0.0)
        return stft + conv + encoder + attention

    def pass_bytes(self, seconds: float, local: bool) -> float:
        """Estimated peak memory of one encoder pass over `seconds` of audio."""
        quadratic = 0.0 if local else self.heads * self.frames(seconds) ** 2 * FLOAT_BYTES * ATTENTION_COPIES
        return quadratic + seconds * self.linear_bytes_per_second(local)

    def longest(self, budget: float, local: bool) -> float:
        """The longest audio (seconds) whose pass fits `budget` bytes."""
        linear = self.linear_bytes_per_second(local)
        if local:
            return budget / linear
        a = self.heads * self.frames(1.0) ** 2 * FLOAT_BYTES * ATTENTION_COPIES
        return (-linear + math.sqrt(linear * linear + 4 * a * budget)) / (2 * a)


@dataclass(frozen=True)
class AsrPlan:
    """How to transcribe one episode: attention mode and the windows (start, end) in seconds."""

    local: bool
    windows: list[tuple[float, float]]
    budget_bytes: int
    estimated_bytes: int

    @property
    def window_seconds(self) -> float:
        """Length of the longest window."""
        return max(end - start for start, end in self.windows)


def plan_asr(
    duration: float, shape: EncoderShape, budget_bytes: int,
    full_attention_limit: float = float("inf"), overlap: float = OVERLAP_SECONDS,
) -> AsrPlan:
    """Full attention in one pass if it fits `budget_bytes` (and `duration <= full_attention_limit`),
    else local attention in the fewest equal windows that each fit, overlapping by `overlap`."""
    if duration <= min(full_attention_limit, shape.longest(budget_bytes, local=False)):
        return AsrPlan(False, [(0.0, duration)], budget_bytes, int(shape.pass_bytes(duration, False)))
    longest = max(shape.longest(budget_bytes, local=True), MIN_WINDOW_SECONDS, 2 * overlap)
    if duration <= longest:
        return AsrPlan(True, [(0.0, duration)], budget_bytes, int(shape.pass_bytes(duration, True)))
    count = math.ceil((duration - overlap) / (longest - overlap))
    step = (duration - overlap) / count
    windows = [(i * step, min(duration, i * step + step + overlap)) for i in range(count)]
    windows[-1] = (windows[-1][0], duration)
    return AsrPlan(True, windows, budget_bytes, int(shape.pass_bytes(step + overlap, True)))


def memory_budget_bytes(device: str) -> int:
    """Bytes one ASR pass may use on `device`: a share of free GPU memory, or a small CPU slice."""
    if device.startswith("cuda"):
        import torch

        target = torch.device(device)
        free, _ = torch.cuda.mem_get_info(target)
        # Blocks torch has cached but not in use (e.g. the diarizer's) are free to this pass too.
        cached = torch.cuda.memory_reserved(target) - torch.cuda.memory_allocated(target)
        return int((free + cached) * CUDA_BUDGET_SHARE)
    return int(min(CPU_BUDGET_BYTES, CPU_BUDGET_SHARE * _available_memory()))


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo (Linux); else total physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- stitching windows ---------------------------------------------------------------------------


def cut_point(words: Sequence[Word], start: float, end: float) -> float:
    """Where to cut an overlap [start, end]: the middle of the widest pause between `words`
    (the earlier window's) in the overlap's central half, else the overlap's middle."""
    middle = (start + end) / 2
    low, high = start + (end - start) / 4, end - (end - start) / 4
    best, widest = middle, 0.0
    for before, after in zip(words, words[1:]):
        gap = after.start - before.end
        centre = (before.end + after.start) / 2
        if low <= centre <= high and gap > widest:
            best, widest = centre, gap
    inside = [w for w in words if low <= w.start <= high or low <= w.end <= high]
    if widest == 0.0 and inside:  # words but no pause: cut after the word nearest the middle
        nearest = min(inside, key=lambda w: abs(w.end - middle))
        best = nearest.end
    return best


def stitch(pieces: Sequence[tuple[tuple[float, float], list[Word]]]) -> list[Word]:
    """Join windows' words (times already in episode seconds) into one list.

    Between two windows, the cut is chosen in the earlier window's words (`cut_point`); a
    word belongs to the window its midpoint falls in, so none is kept twice or dropped.
    """
    kept: list[Word] = []
    lower = float("-inf")
    for index, ((start, end), words) in enumerate(pieces):
        upper = float("inf")
        if index + 1 < len(pieces):
            next_start = pieces[index + 1][0][0]
            upper = cut_point(words, next_start, end)
        kept.extend(w for w in words if lower <= (w.start + w.end) / 2 < upper)
        lower = upper
    return kept


# --- diarizer features, a piece at a time ------------------------------------------------------


def chunked_features(
    preprocessor: Any, signal: Any, length: Any, chunk_seconds: float
) -> tuple[Any, Any] | None:
    """NeMo's mel features of `signal` (batch of one, torch) computed `chunk_seconds` at a time.

    Equal to `preprocessor(input_signal=signal, length=length)` up to float rounding: each
    piece carries STFT context from its neighbours and only its own frames are kept; per-feature
    normalisation uses statistics of the whole file (a second pass over the features).
    Returns None where that equality does not hold (a batch, exact_pad, frame splicing, other
    normalisations): the caller then uses the one-call path.
    """
    import torch

    featurizer = getattr(preprocessor, "featurizer", None)
    normalize = getattr(featurizer, "normalize", "?")
    if (
        featurizer is None or signal.shape[0] != 1 or featurizer.stft_pad_amount is not None
        or getattr(featurizer, "frame_splicing", 1) > 1 or normalize not in (None, "", "NA", "per_feature")
    ):
        return None
    rate = int(preprocessor._cfg.sample_rate)
    hop, n_fft = int(featurizer.hop_length), int(featurizer.n_fft)
    total = int(length[0])
    frames = int(featurizer.get_seq_len(length.cpu())[0])
    if frames < 2:
        return None
    context = hop * math.ceil(2 * n_fft / hop)  # samples each side: a frame's window never sees a seam
    step = max(1, int(chunk_seconds * rate) // hop)  # frames per piece
    pieces = []
    featurizer.normalize = None
    try:
        for first in range(0, frames, step):
            last = min(frames, first + step)
            begin, end = max(0, first * hop - context), min(total, last * hop + context)
            piece = signal[:, begin:end]
            features, _ = preprocessor(input_signal=piece, length=torch.tensor([end - begin], device=piece.device))
            offset = (first * hop - begin) // hop
            pieces.append(features[:, :, offset:offset + last - first].detach())
    finally:
        featurizer.normalize = normalize
    features = torch.cat(pieces, dim=2)
    del pieces
    if normalize == "per_feature":
        _normalize_in_place(features)
    return features, torch.tensor([frames], dtype=torch.long, device=features.device)


def _normalize_in_place(features: Any) -> None:
    """NeMo's `per_feature` normalisation (mean 0, unbiased std + 1e-5 per mel band), in place."""
    import torch

    from nemo.collections.asr.parts.preprocessing.features import CONSTANT

    x = features[0]
    count, block = x.shape[1], 1 << 18  # float64 sums over millions of frames, in bounded blocks
    mean = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, count, block):
        mean += x[:, start:start + block].double().sum(dim=1)
    mean /= count
    variance = torch.zeros_like(mean)
    for start in range(0, count, block):
        variance += ((x[:, start:start + block].double() - mean[:, None]) ** 2).sum(dim=1)
    std = torch.sqrt(variance / (count - 1)) + CONSTANT
    x.sub_(mean[:, None].to(x.dtype)).div_(std[:, None].to(x.dtype))


def offset_words(words: list[Word], seconds: float) -> list[Word]:
    """`words` shifted by `seconds` (a window's start), rounded to the millisecond."""
    return [Word(word=w.word, start=round(w.start + seconds, 3), end=round(w.end + seconds, 3)) for w in words]


def run_windows(
    samples: np.ndarray, sample_rate: int, windows: Sequence[tuple[float, float]],
    transcribe: Callable[[np.ndarray], list[Word]],
) -> list[Word]:
    """`transcribe` each window of `samples` (views, no copies), shift its words, stitch them."""
    pieces = []
    for start, end in windows:
        first, last = int(round(start * sample_rate)), int(round(end * sample_rate))
        pieces.append(((start, end), offset_words(transcribe(samples[first:last]), first / sample_rate)))
    return stitch(pieces)
