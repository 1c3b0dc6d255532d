"""Signal levels and the result's JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from podcastpile.speech import levels as signal
from podcastpile.speech.result import EpisodeResult, Segment, Turn, Word


def test_levels_of_a_full_scale_square_wave():
    samples = np.tile(np.array([1.0, -1.0], dtype=np.float32), 800)
    rms, peak, clipped = signal.levels(samples)
    assert rms == pytest.approx(0.0, abs=1e-6)
    assert peak == pytest.approx(0.0, abs=1e-6)
    assert clipped == 1.0


def test_levels_of_a_half_scale_sine():
    t = np.arange(16000) / 16000
    samples = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rms, peak, clipped = signal.levels(samples)
    assert rms == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)  # ≈ -9.03 dBFS
    assert peak == pytest.approx(20 * np.log10(0.5), abs=0.01)  # ≈ -6.02 dBFS
    assert clipped == 0.0


def test_clipped_ratio_counts_samples_at_full_scale():
    samples = np.zeros(1000, dtype=np.float32)
    samples[:25] = 1.0
    samples[25:50] = -0.9999
    assert signal.levels(samples)[2] == pytest.approx(0.05)


def test_silence_and_empty_are_floored_not_infinite():
    assert signal.levels(np.zeros(100, dtype=np.float32)) == (signal.FLOOR_DBFS, signal.FLOOR_DBFS, 0.0)
    assert signal.levels(np.zeros(0, dtype=np.float32)) == (signal.FLOOR_DBFS, signal.FLOOR_DBFS, 0.0)


def test_span_clamps_to_the_audio():
    samples = np.arange(100, dtype=np.float32)
    assert signal.span(samples, 10, 2.0, 3.0).tolist() == list(range(20, 30))
    assert signal.span(samples, 10, 9.5, 20.0).tolist() == list(range(95, 100))
    assert signal.span(samples, 10, 5.0, 4.0).size == 0


def test_covered_seconds_counts_overlaps_once():
    assert signal.covered_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert signal.speech_ratio([(0, 2), (1, 3)], 0, 10) == pytest.approx(0.3)
    assert signal.speech_ratio([(0, 2)], 1, 1) == 0.0


def _result() -> EpisodeResult:
    words = [Word(word="hello", start=0.1, end=0.5), Word(word="there", start=0.6, end=0.9)]
    turn = Turn(speaker="speaker_0", start=0.1, end=0.9, text="hello there", words=words,
                rms_dbfs=-20.5, peak_dbfs=-3.0, clipped_ratio=0.0, speech_ratio=0.875)
    return EpisodeResult(
        duration=1.0, sha256="a" * 64, md5="b" * 32, audio_format="mp3/mp3", audio_bytes=1234,
        language="en", num_speakers=1, text="hello there", turns=[turn],
        segments=[Segment(speaker="speaker_0", start=0.0, end=1.0)],
        asr_model="tiny_asr.nemo", asr_fingerprint="sha256:0", diar_model="tiny_diar.nemo",
        diar_fingerprint="sha256:1", code_version="0.1.0", processing_seconds=0.25, rtf=0.25,
        rms_dbfs=-22.0, peak_dbfs=-3.0, clipped_ratio=0.0, speech_ratio=0.8,
    )


def test_result_round_trips_through_json():
    result = _result()
    data = json.loads(json.dumps(result.to_dict()))
    assert EpisodeResult.from_dict(data) == result
    assert data["turns"][0]["words"][1] == {"word": "there", "start": 0.6, "end": 0.9}
    for key in ("duration", "sha256", "md5", "processing_seconds", "code_version"):
        assert key in data


def test_from_dict_rejects_malformed_results():
    data = _result().to_dict()
    del data["sha256"]
    with pytest.raises(ValidationError):
        EpisodeResult.from_dict(data)
    data = _result().to_dict()
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        EpisodeResult.from_dict(data)


def test_results_stored_before_the_quality_scores_still_load():
    data = _result().to_dict()
    quality_keys = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "vad_segments", "loudness_lufs", "snr_db",
                    "overlap_ratio")
    for key in (*quality_keys, "dnsmos_model", "vad_model", "loudness_model"):
        data.pop(key)
    for key in quality_keys:
        data["turns"][0].pop(key)
    loaded = EpisodeResult.from_dict(data)
    assert loaded == _result() and loaded.dnsmos_ovrl is None and loaded.turns[0].overlap_ratio is None
