"""Quality scores from the real models (DNSMOS P.835, Silero VAD, BS.1770) on synthetic audio."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from podcastpile.errors import Stopped
from podcastpile.speech import quality
from podcastpile.speech.quality import dnsmos, loudness, vad

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "speech"
RATE = 16_000


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[dict]]:
    """The espeak-ng conversation (16 kHz mono float32) and its ground-truth turns."""
    import soundfile

    samples, rate = soundfile.read(FIXTURES / "conversation.wav", dtype="float32")
    assert rate == RATE
    return samples, json.loads((FIXTURES / "conversation.json").read_text())["turns"]


def with_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """`samples` plus white noise at `snr_db` below the power of the speech (non-silent) part."""
    voiced = samples[np.abs(samples) > 1e-3]
    power = float(np.mean(voiced.astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).standard_normal(samples.size) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = samples + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()))).astype(np.float32)


def music(seconds: float = 12.0) -> np.ndarray:
    """Music-like audio: four triads with overtones, struck every half second, decaying."""
    chords = [(261.63, 329.63, 392.0), (220.0, 261.63, 329.63), (174.61, 220.0, 261.63), (196.0, 246.94, 293.66)]
    beat = int(0.5 * RATE)
    t = np.arange(beat) / RATE
    notes = []
    for index in range(int(seconds * RATE) // beat):
        chord = chords[(index // 4) % len(chords)]
        notes.append(sum(np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t) for f in chord) * np.exp(-3 * t))
    out = np.concatenate(notes)
    return (0.2 * out / np.abs(out).max()).astype(np.float32)


def sine(frequency: float, amplitude: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_clean_speech_scores_higher_than_the_same_speech_at_0_db_snr(speech):
    samples, _ = speech
    span = [(0.0, samples.size / RATE)]
    _, (clean,) = quality.measure(samples, span)
    _, (noisy,) = quality.measure(with_noise(samples, 0.0), span)
    assert clean.dnsmos_ovrl is not None and noisy.dnsmos_ovrl is not None
    assert clean.dnsmos_ovrl > noisy.dnsmos_ovrl + 0.5
    assert clean.dnsmos_bak > noisy.dnsmos_bak  # the background is what got worse
    assert all(1.0 <= score <= 5.0 for q in (clean, noisy) for score in (q.dnsmos_sig, q.dnsmos_bak, q.dnsmos_ovrl))
    assert clean.snr_db is not None and noisy.snr_db is not None
    assert clean.snr_db > noisy.snr_db + 10
    assert noisy.snr_db < 10  # 0 dB of noise under speech: speech+noise over noise stays a few dB


def test_dnsmos_matches_the_reference_implementation(speech):
    """Our windows and fits against speechmos's own `dnsmos.run` on a clip the reference's
    window rounding does not affect (under 9.01 s: doubled to 2 or 3 windows)."""
    from speechmos import dnsmos as reference

    samples, turns = speech
    clip = samples[int(turns[0]["start"] * RATE):int(turns[1]["end"] * RATE)]
    ours = dnsmos.score(clip)
    theirs = reference.run(clip, RATE)
    assert ours.sig == pytest.approx(theirs["sig_mos"], abs=1e-4)
    assert ours.bak == pytest.approx(theirs["bak_mos"], abs=1e-4)
    assert ours.ovrl == pytest.approx(theirs["ovrl_mos"], abs=1e-4)


def test_windows_follow_the_reference_hops():
    assert dnsmos.windows(np.ones(RATE * 3, np.float32)).shape == (3, dnsmos.WINDOW)  # doubled to 12 s
    assert len(dnsmos.windows(np.ones(RATE * 30, np.float32))) == 21  # floor(30 - 9.01) + 1
    with pytest.raises(ValueError):
        dnsmos.windows(np.zeros(0, np.float32))


def test_silence_has_no_speech_and_no_dnsmos(speech):
    samples, _ = speech
    gap = np.zeros(RATE * 6, np.float32)
    audio = np.concatenate([samples, gap, samples])
    start = samples.size / RATE
    _, (silent, spoken) = quality.measure(audio, [(start + 0.5, start + 5.5), (0.0, start)])
    assert silent.speech_ratio <= 0.02 and silent.vad_segments == 0
    assert silent.dnsmos_ovrl is None and silent.dnsmos_sig is None and silent.dnsmos_bak is None
    assert silent.loudness_lufs is None  # every block under the -70 LUFS gate
    assert silent.snr_db is None
    assert spoken.dnsmos_ovrl is not None and spoken.speech_ratio > 0.5


def test_a_turn_with_under_a_second_of_speech_gets_no_dnsmos(speech):
    samples, turns = speech
    short = next(t for t in turns if t["end"] - t["start"] < quality.MIN_SPEECH_SECONDS)
    long = next(t for t in turns if t["end"] - t["start"] > 2 * quality.MIN_SPEECH_SECONDS)
    _, (few, many) = quality.measure(samples, [(short["start"], short["end"]), (long["start"], long["end"])])
    assert few.speech_ratio > 0.5 and few.dnsmos_ovrl is None
    assert many.dnsmos_ovrl is not None


def test_music_like_audio_has_a_low_speech_ratio():
    _, (turn,) = quality.measure(music(), [(0.0, 12.0)])
    assert turn.speech_ratio < 0.2
    assert turn.loudness_lufs is not None  # it is loud, just not speech


def test_speech_ratio_follows_the_speech(speech):
    samples, turns = speech
    episode, measured = quality.measure(samples, [(t["start"], t["end"]) for t in turns])
    spoken = sum(t["end"] - t["start"] for t in turns) / (samples.size / RATE)
    assert episode.speech_ratio == pytest.approx(spoken, abs=0.1)
    assert episode.vad_segments == len(turns)  # a second's pause between turns: one segment each
    assert all(q.speech_ratio > 0.8 and q.vad_segments == 1 for q in measured)


def test_loudness_of_a_997_hz_sine_at_minus_20_dbfs():
    # BS.1770: a full-scale 997 Hz sine reads -3.01 LKFS (its RMS is -3.01 dB, the K-weighting
    # gain there is offset by the -0.691 constant), so a -20 dBFS peak sine reads -23.01.
    # At 16 kHz pyloudnorm's K-filter is a few hundredths of a dB off its 48 kHz response.
    tone = sine(997.0, 10 ** (-20 / 20), 10.0)
    measured = loudness.Loudness.of(tone).integrated(0.0, 10.0)
    expected = 20 * np.log10(0.1) + 10 * np.log10(0.5)
    assert measured == pytest.approx(expected, abs=0.1)
    _, (turn,) = quality.measure(tone, [(0.0, 10.0)])
    assert turn.loudness_lufs == pytest.approx(measured)


def test_loudness_equals_pyloudnorm_across_filter_chunks(monkeypatch):
    import pyloudnorm

    monkeypatch.setattr(loudness, "CHUNK", loudness.STEP * 7)  # many chunks: state carried over
    rng = np.random.default_rng(3)
    envelope = np.repeat(rng.uniform(0.0, 0.4, 20), RATE)
    audio = (rng.standard_normal(envelope.size) * envelope).astype(np.float32)
    expected = pyloudnorm.Meter(RATE).integrated_loudness(audio.astype(np.float64))
    assert loudness.Loudness.of(audio).integrated(0.0, 20.0) == pytest.approx(expected, abs=1e-6)
    assert loudness.Loudness.of(audio[:RATE // 4]).integrated(0.0, 0.25) is None  # under one block


def test_overlap_ratio_from_the_diarizer_segments(speech):
    samples, _ = speech
    segments = [("a", 0.0, 4.0), ("b", 3.0, 6.0), ("a", 3.5, 5.0), ("c", 7.0, 8.0)]
    assert quality.overlap_intervals(segments) == [(3.0, 5.0)]
    assert quality.overlap_intervals([("a", 0.0, 2.0), ("b", 2.0, 3.0)]) == []  # touching is not overlap
    _, (both, one) = quality.measure(samples, [(2.0, 6.0), (6.0, 8.0)], segments)
    assert both.overlap_ratio == pytest.approx(0.5)
    assert one.overlap_ratio == 0.0


def test_episode_aggregates_weight_turns_by_duration(speech):
    samples, turns = speech
    spans = [(t["start"], t["end"]) for t in turns]
    episode, measured = quality.measure(samples, spans, [(t["speaker"], t["start"], t["end"]) for t in turns])
    scored = [(end - start, q.dnsmos_ovrl) for (start, end), q in zip(spans, measured) if q.dnsmos_ovrl is not None]
    assert 0 < len(scored) < len(spans)  # the short last turn is left out, not counted as 0
    assert episode.dnsmos_ovrl == pytest.approx(sum(w * v for w, v in scored) / sum(w for w, _ in scored))
    assert episode.loudness_lufs == pytest.approx(
        loudness.Loudness.of(samples).integrated(0.0, samples.size / RATE))


def test_a_thread_pool_gives_the_same_figures(speech):
    samples, turns = speech
    spans = [(t["start"], t["end"]) for t in turns]
    alone = quality.measure(samples, spans)
    with ThreadPoolExecutor(2) as pool:
        pooled = quality.measure(samples, spans, executor=pool)
    assert pooled == alone


def test_a_stop_skips_the_turns_not_scored_yet(speech, monkeypatch):
    samples, turns = speech
    spans = [(t["start"], t["end"]) for t in turns]
    stop, scored = threading.Event(), []
    turn = quality.EpisodeSignal.turn

    def scored_then_stopped(self, start, end):  # type: ignore[no-untyped-def]
        scored.append(start)
        stop.set()  # the batch stops while the first turn is scored
        return turn(self, start, end)

    monkeypatch.setattr(quality.EpisodeSignal, "turn", scored_then_stopped)
    with pytest.raises(Stopped):
        quality.measure(samples, spans, stop=stop)
    assert len(spans) > 1 and scored == [spans[0][0]]


def test_vad_batches_streams_like_one_long_stream(speech, monkeypatch):
    """Cutting the episode into side-by-side streams moves speech frames only near the cuts."""
    samples, _ = speech
    audio = np.concatenate([samples] * 4)
    whole = vad.Vad.of(audio).mask
    monkeypatch.setattr(vad, "STREAM_SECONDS", 5.0)
    streamed = vad.Vad.of(audio).mask
    assert whole.size == streamed.size and whole.any()
    assert np.count_nonzero(whole != streamed) <= 0.03 * whole.size


def test_model_ids_name_version_and_weights():
    ids = quality.model_ids()
    assert set(ids) == {"dnsmos_model", "vad_model", "loudness_model"}
    assert "speechmos 0.0.1.1" in ids["dnsmos_model"] and "sha256:" in ids["dnsmos_model"]
    assert ids["vad_model"].startswith("silero-vad 6.2.3 silero_vad.onnx sha256:")
    assert "pyloudnorm" in ids["loudness_model"]
