"""Quality scores per turn and per episode, from real models, for filtering the dataset.

- `dnsmos_sig`, `dnsmos_bak`, `dnsmos_ovrl`: DNSMOS P.835 (`dnsmos`), null for a turn with
  under `MIN_SPEECH_SECONDS` of speech (the model scores anything, silence included).
- `speech_ratio`, `vad_segments`: Silero VAD (`vad`).
- `loudness_lufs`: ITU-R BS.1770 integrated loudness (`loudness`).
- `snr_db`: mean power of the VAD's speech frames over that of its non-speech frames.
- `overlap_ratio`: share of the span where the diarizer has two or more speakers active.

The episode is analysed once (VAD, K-weighting, frame powers) and each turn reads its span
of that; only DNSMOS runs per turn, on the turn's own audio. Everything takes 16 kHz mono
float32 samples. Models load lazily, once per process; onnxruntime sessions are
single-threaded, so a `ThreadPoolExecutor` of N workers uses about N cores.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import numpy as np

from podcastpile.errors import Stopped
from podcastpile.speech import levels
from podcastpile.speech.quality import dnsmos, loudness, vad
from podcastpile.speech.quality.vad import FRAME

MIN_SPEECH_SECONDS = 1.0
NOISE_CONTEXT_SECONDS = 3.0  # the pauses around a turn are its background noise too
MIN_NOISE_FRAMES = 8  # 256 ms of non-speech before a noise estimate is trusted
POWER_FLOOR = 1e-12  # -120 dBFS, as `levels.FLOOR_DBFS`: digital silence is not -inf
QUALITY_FIELDS = (
    "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "speech_ratio", "vad_segments",
    "loudness_lufs", "snr_db", "overlap_ratio",
)


def load() -> None:
    """Create the models' sessions now, as the speech models are loaded once per batch: off the
    first episode's clock (its time budget) and before any thread of the pool needs them."""
    from podcastpile.speech.quality import runtime

    runtime.session(dnsmos._path())
    runtime.session(runtime.package_file("silero_vad", "data", vad.MODEL_FILE))
    model_ids()  # hashes the weights once


def model_ids() -> dict[str, str]:
    """Provenance of each quality model: result field → model id with version and digest."""
    return {"dnsmos_model": dnsmos.model_id(), "vad_model": vad.model_id(), "loudness_model": loudness.model_id()}


@dataclass(frozen=True)
class Quality:
    """The quality fields of one turn or one episode (None: not measurable there)."""

    dnsmos_sig: float | None
    dnsmos_bak: float | None
    dnsmos_ovrl: float | None
    speech_ratio: float
    vad_segments: int
    loudness_lufs: float | None
    snr_db: float | None
    overlap_ratio: float

    def rounded(self) -> dict[str, float | int | None]:
        """The fields, rounded for storage (no figure here is meaningful past these digits)."""
        digits = {"speech_ratio": 4, "overlap_ratio": 4}
        return {key: value if value is None or isinstance(value, int) else round(value, digits.get(key, 3))
                for key, value in asdict(self).items()}


def overlap_intervals(segments: Sequence[tuple[str, float, float]]) -> list[tuple[float, float]]:
    """Spans where two or more speakers' segments are active (one speaker's own overlapping
    pieces count once)."""
    by_speaker: dict[str, list[tuple[float, float]]] = {}
    for speaker, start, end in segments:
        if end > start:
            by_speaker.setdefault(speaker, []).append((start, end))
    events: list[tuple[float, int]] = []
    for spans in by_speaker.values():
        reach = float("-inf")
        merged: list[list[float]] = []
        for start, end in sorted(spans):
            if merged and start <= reach:
                merged[-1][1] = reach = max(reach, end)
            else:
                merged.append([start, end])
                reach = end
        for start, end in merged:
            events += [(start, 1), (end, -1)]
    found: list[tuple[float, float]] = []
    active, opened = 0, 0.0
    for time, change in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at a tie
        if active < 2 <= active + change:
            opened = time
        elif active >= 2 > active + change and time > opened:
            found.append((opened, time))
        active += change
    return found


def frame_powers(samples: np.ndarray) -> np.ndarray:
    """Mean square of each VAD frame (the last partial frame over its own length)."""
    whole = samples.size // FRAME
    body = samples[:whole * FRAME].reshape(whole, FRAME)
    powers = np.einsum("ij,ij->i", body, body, dtype=np.float64) / FRAME
    tail = samples[whole * FRAME:].astype(np.float64)
    return np.append(powers, np.dot(tail, tail) / tail.size) if tail.size else powers


def _snr(speech: np.ndarray, noise: np.ndarray) -> float:
    return float(10.0 * np.log10(max(speech.mean(), POWER_FLOOR) / max(noise.mean(), POWER_FLOOR)))


class EpisodeSignal:
    """One episode's audio analysed once: VAD, K-weighted loudness steps, frame powers, and the
    diarizer's overlaps. `turn` then measures any span of it."""

    def __init__(self, samples: np.ndarray, segments: Sequence[tuple[str, float, float]] = (),
                 executor: Executor | None = None) -> None:
        self.samples = samples
        if executor is not None:  # the two passes are independent: side by side when we may
            found = executor.submit(vad.Vad.of, samples)
            self.loudness = loudness.Loudness.of(samples)
            self.vad = found.result()
        else:
            self.vad = vad.Vad.of(samples)
            self.loudness = loudness.Loudness.of(samples)
        self.powers = frame_powers(samples)
        self.overlaps = overlap_intervals(segments)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples.size / vad.SAMPLE_RATE

    def snr(self, start: float, end: float) -> float | None:
        """Speech power over non-speech power in [start, end], dB; the noise is taken from
        `NOISE_CONTEXT_SECONDS` around the span too, then from the whole episode; None without
        speech or without any non-speech to compare it with."""
        mask = self.vad.mask
        inside = self.vad.frames(start, end)
        speech = self.powers[inside][mask[inside]]
        if speech.size == 0:
            return None
        around = self.vad.frames(start - NOISE_CONTEXT_SECONDS, end + NOISE_CONTEXT_SECONDS)
        noise = self.powers[around][~mask[around]]
        if noise.size < MIN_NOISE_FRAMES:
            noise = self.powers[~mask]
        return _snr(speech, noise) if noise.size else None

    def turn(self, start: float, end: float) -> Quality:
        """Every quality field of the span [start, end] seconds."""
        scores = None
        if self.vad.speech_seconds(start, end) >= MIN_SPEECH_SECONDS:
            scores = dnsmos.score(levels.span(self.samples, vad.SAMPLE_RATE, start, end))
        return Quality(
            dnsmos_sig=scores.sig if scores else None, dnsmos_bak=scores.bak if scores else None,
            dnsmos_ovrl=scores.ovrl if scores else None,
            speech_ratio=self.vad.speech_ratio(start, end), vad_segments=self.vad.segments(start, end),
            loudness_lufs=self.loudness.integrated(start, end), snr_db=self.snr(start, end),
            overlap_ratio=levels.speech_ratio(self.overlaps, start, end),
        )

    def episode(self, turns: Sequence[tuple[float, float]], measured: Sequence[Quality]) -> Quality:
        """The episode's fields: VAD, loudness and SNR measured over all of the audio; DNSMOS
        and overlap as turn-duration-weighted means of the turns' (DNSMOS over scored turns)."""
        lengths = np.array([max(0.0, end - start) for start, end in turns])

        def weighted(name: str) -> float | None:
            pairs = [(w, getattr(q, name)) for w, q in zip(lengths, measured) if getattr(q, name) is not None]
            total = sum(w for w, _ in pairs)
            return float(sum(w * v for w, v in pairs) / total) if total > 0 else None

        mask = self.vad.mask
        speech, noise = self.powers[mask], self.powers[~mask]
        return Quality(
            dnsmos_sig=weighted("dnsmos_sig"), dnsmos_bak=weighted("dnsmos_bak"), dnsmos_ovrl=weighted("dnsmos_ovrl"),
            speech_ratio=float(mask.mean()) if mask.size else 0.0, vad_segments=len(vad.runs(mask)),
            loudness_lufs=self.loudness.integrated(0.0, self.duration),
            snr_db=_snr(speech, noise) if speech.size and noise.size else None,
            overlap_ratio=weighted("overlap_ratio") or 0.0,
        )


def measure(
    samples: np.ndarray,
    turns: Sequence[tuple[float, float]],
    segments: Sequence[tuple[str, float, float]] = (),
    executor: Executor | None = None,
    stop: threading.Event | None = None,
) -> tuple[Quality, list[Quality]]:
    """(episode, per turn) quality of `samples` with turns at `turns` (start, end seconds) and
    the diarizer's `segments` (speaker, start, end). With `executor`, turns are scored on it
    side by side (DNSMOS is nearly all of the time). Once `stop` is set, the turns not scored
    yet are skipped and `Stopped` is raised (an hour of audio takes minutes to score)."""
    signal = EpisodeSignal(samples, segments, executor)

    def score(span: tuple[float, float]) -> Quality:
        if stop is not None and stop.is_set():
            raise Stopped("quality scoring stopped")
        return signal.turn(*span)

    if executor is None:
        measured = [score(span) for span in turns]
    else:
        measured = list(executor.map(score, turns))
    return signal.episode(turns, measured), measured
