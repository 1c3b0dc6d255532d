"""Long audio in bounded memory: the ASR plan, windows stitched at pauses, chunked diarizer
features, and the whole-file helpers (levels, merge) that must not scale worse than linearly.

The windowed and chunked paths run on the tiny models over the committed conversation repeated,
with budgets and chunk sizes shrunk so that 100 s of audio takes the long-audio path.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from podcastpile.speech import longform
from podcastpile.speech import levels as signal
from podcastpile.speech import nemo_models as models_module
from podcastpile.speech.audio import DecodedAudio, decode
from podcastpile.speech.longform import EncoderShape, plan_asr, stitch
from podcastpile.speech.merge import assign_speaker, merge_words, normalize_segments
from podcastpile.speech.nemo_models import local_context
from podcastpile.speech.result import Segment, Word

GIB = 1 << 30
# Parakeet TDT 0.6B (bench/gpu_pipeline.py's full-size config): 24 × 1024, 8 heads, 128 mels.
PARAKEET = EncoderShape(heads=8, d_model=1024, ff_expansion=4, conv_channels=256, mels=128,
                        n_fft=512, hop_seconds=0.01, subsampling=8)


@pytest.fixture(scope="module")
def conversation_audio(conversation):
    return decode(conversation["wav"])


def repeated(audio: DecodedAudio, times: int) -> DecodedAudio:
    return DecodedAudio(np.tile(audio.samples, times), audio.sample_rate, audio.format)


def truth_words(conversation, times: int) -> list[str]:
    return " ".join(turn["text"] for turn in conversation["turns"]).split() * times


# --- the plan ------------------------------------------------------------------------------------


def test_estimate_reproduces_nvidias_published_limits_for_parakeet():
    """Full attention fits ~20 min on an 80 GB GPU; local attention about 3 h (facts.md)."""
    assert 18 * 60 <= PARAKEET.longest(78 * GIB, local=False) <= 26 * 60
    assert 2.5 * 3600 <= PARAKEET.longest(78 * GIB, local=True) <= 3.5 * 3600


@pytest.mark.parametrize("budget_gib", [0.5, 1, 11, 39])
def test_every_length_fits_the_budget_and_long_audio_is_windowed(budget_gib):
    budget = int(budget_gib * GIB)
    previous_full = True
    for minutes in (1, 5, 10, 15, 20, 30, 60, 180, 360, 720):
        plan = plan_asr(minutes * 60.0, PARAKEET, budget, full_attention_limit=1200.0)
        window = plan.window_seconds
        assert PARAKEET.pass_bytes(window, plan.local) <= budget * 1.01 or window <= longform.MIN_WINDOW_SECONDS
        assert plan.windows[0][0] == 0.0 and plan.windows[-1][1] == minutes * 60.0
        for (_, end), (start, _) in zip(plan.windows, plan.windows[1:]):
            assert end - start == pytest.approx(longform.OVERLAP_SECONDS)  # overlapping, no gap
        if not plan.local:
            assert previous_full, "full attention only below the switch point"
            assert len(plan.windows) == 1 and minutes * 60 <= 1200
        previous_full = not plan.local
    # A 24 GB card (half its free memory as budget) no longer tries 15 min in full attention.
    assert plan_asr(900.0, PARAKEET, 11 * GIB, 1200.0).local


def test_short_audio_keeps_one_full_attention_pass():
    plan = plan_asr(30.0, PARAKEET, GIB, full_attention_limit=1200.0)
    assert not plan.local and plan.windows == [(0.0, 30.0)]


@pytest.mark.parametrize("trained, expected", [([-1, -1], [128, 128]), ([4, 4], [4, 4]), ([200, 64], [128, 64])])
def test_local_attention_never_widens_the_trained_context(trained, expected):
    assert local_context(trained) == expected


# --- stitching windows -------------------------------------------------------------------------


def words_at(*spans: tuple[str, float, float]) -> list[Word]:
    return [Word(word=w, start=a, end=b) for w, a, b in spans]


def test_stitch_keeps_each_word_once_and_cuts_in_the_widest_pause():
    first = words_at(("a", 1, 2), ("b", 8, 9), ("c", 9.1, 10), ("d", 13, 14), ("edge", 15.5, 16))
    # The second window heard the overlap (8-16 s) too, with slightly different times.
    second = words_at(("bad-start", 8.0, 8.2), ("c", 9.15, 10), ("d", 13.02, 14), ("e", 17, 18))
    kept = stitch([((0.0, 16.0), first), ((8.0, 20.0), second)])
    assert [w.word for w in kept] == ["a", "b", "c", "d", "e"]
    assert longform.cut_point(first, 8.0, 16.0) == pytest.approx(11.5)  # the 10-13 s pause


def test_windowed_transcription_gives_the_true_words(tiny_models, conversation_audio, conversation):
    audio = repeated(conversation_audio, 12)  # 100 s
    saved = tiny_models.asr_memory_budget_bytes
    try:
        tiny_models.asr_memory_budget_bytes = 1  # windows as small as allowed: 60 s
        plan = tiny_models.asr_plan(audio.duration)
        transcript = tiny_models.transcribe(audio)
    finally:
        tiny_models.asr_memory_budget_bytes = saved
    assert plan.local and len(plan.windows) == 2 and transcript.windows == 2
    # Both windows cut the conversation mid-turn; the stitched words are exactly the truth.
    assert [w.word for w in transcript.words] == truth_words(conversation, 12)
    assert transcript.text == " ".join(truth_words(conversation, 12))
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts) and 0 <= starts[0] and transcript.words[-1].end <= audio.duration + 0.1
    # Times are episode times: repetition k's first word starts near k × 8.3 s + 0.5 s.
    first_words = transcript.words[:: len(truth_words(conversation, 1))]
    for k, word in enumerate(first_words):
        assert word.start == pytest.approx(k * conversation_audio.duration + 0.5, abs=0.4)
    again = tiny_models.transcribe(conversation_audio)  # short again: one full-attention pass
    assert again.windows == 1 and not again.local_attention and not tiny_models.asr().local_attention


# --- diarizer features in pieces --------------------------------------------------------------


def test_chunked_features_equal_the_whole_file(tiny_models, conversation_audio):
    import torch

    model = tiny_models.diarizer().model
    signal_ = torch.tensor(np.tile(conversation_audio.samples, 3))[None]
    length = torch.tensor([signal_.shape[1]])
    with torch.no_grad():
        whole, whole_length = model.preprocessor(input_signal=signal_, length=length)
        pieces, pieces_length = longform.chunked_features(model.preprocessor, signal_, length, 2.5)
    assert int(pieces_length[0]) == int(whole_length[0]) == pieces.shape[2]
    assert torch.allclose(pieces, whole[:, :, : pieces.shape[2]], atol=1e-4)


def test_diarizer_in_feature_chunks_finds_the_same_segments(tiny_models, conversation_audio, monkeypatch):
    audio = repeated(conversation_audio, 4)
    whole = tiny_models.diarize(audio).segments
    calls = []
    original = longform.chunked_features
    monkeypatch.setattr(longform, "chunked_features", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    monkeypatch.setattr(tiny_models, "diar_feature_chunk_seconds", 5.0)
    chunked = tiny_models.diarize(audio).segments
    assert calls == [5.0]  # the chunked path ran
    assert chunked == whole and len({s.speaker for s in whole}) == 2
    model = tiny_models.diarizer().model
    assert "process_signal" not in vars(model)  # NeMo's own method is back


# --- whole-file helpers ------------------------------------------------------------------------


def test_levels_in_blocks_equal_the_one_shot_formula():
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal(signal.LEVEL_BLOCK * 2 + 12345) * 0.3).clip(-1, 1).astype(np.float32)
    magnitude = np.abs(samples.astype(np.float64))
    rms, peak, clipped = signal.levels(samples)
    assert rms == pytest.approx(signal.dbfs(float(np.sqrt(np.mean(magnitude ** 2)))), abs=1e-9)
    assert peak == signal.dbfs(float(magnitude.max()))
    assert clipped == pytest.approx(float(np.mean(magnitude >= signal.CLIP_LEVEL)))


def test_merge_with_the_segment_index_matches_the_full_scan():
    rng = random.Random(7)
    for _ in range(30):
        segments, clock = [], 0.0
        for _ in range(rng.randint(1, 40)):
            start = clock + rng.uniform(-1.0, 2.0)
            segments.append(Segment(speaker=f"speaker_{rng.randrange(3)}", start=max(0, start),
                                    end=max(0, start) + rng.uniform(0.0, 4.0)))
            clock = max(0, start) + rng.uniform(0.0, 3.0)
        words, t = [], 0.0
        for _ in range(rng.randint(0, 80)):
            t += rng.uniform(0.0, 1.5)
            words.append(Word(word="w", start=round(t, 2), end=round(t + rng.uniform(0.0, 0.6), 2)))
        turns = merge_words(words, segments)
        clean = normalize_segments(segments)
        first_seen: dict[str, float] = {}
        for segment in clean:
            first_seen.setdefault(segment.speaker, segment.start)
        speakers, previous = [], None
        for word in sorted(words, key=lambda w: (w.start, w.end)):
            previous = assign_speaker(word, clean, previous, first_seen) if clean else "speaker_0"
            speakers.append(previous)
        assert [t.speaker for t in turns for _ in t.words] == speakers


# --- NeMo's diarizer output past 5 h 58 min ------------------------------------------------------


def test_diarizer_lines_keep_segments_past_nemos_int32_limit():
    """NeMo scales times by 1e5 into int32: a 6 h episode lost every segment after 21474.8 s."""
    from nemo.collections.asr.parts.utils import speaker_utils

    original = speaker_utils.merge_float_intervals
    late = [[21_470.0, 21_480.5], [21_600.0, 21_607.25]]
    with models_module._wide_interval_merge():
        lines = speaker_utils.generate_diarization_output_lines([[[1.0, 2.0], *late], [[3.0, 4.0]]], 2)
    assert speaker_utils.merge_float_intervals is original  # put back
    assert sorted(lines) == sorted([
        "1.000 2.000 speaker_0", "21470.000 21480.500 speaker_0", "21600.000 21607.250 speaker_0",
        "3.000 4.000 speaker_1",
    ])


def test_interval_merge_matches_nemos_below_the_limit():
    from nemo.collections.asr.parts.utils import speaker_utils

    rng = random.Random(5)
    for _ in range(50):
        ranges = []
        for _ in range(rng.randint(1, 12)):
            start = round(rng.uniform(0, 3000), 2)
            ranges.append([start, round(start + rng.choice([0.0, 0.01, 0.08, rng.uniform(0, 30)]), 2)])
        ours, nemos = models_module.merge_float_intervals(ranges), speaker_utils.merge_float_intervals(ranges)
        # The same ranges; NeMo's values went through float32 (628.37 comes back as 628.36999...).
        assert len(ours) == len(nemos)
        assert [x for pair in ours for x in pair] == pytest.approx([x for pair in nemos for x in pair], abs=1e-3)


def test_long_audio_diarization_uses_the_wide_merge(tiny_models, conversation_audio, monkeypatch):
    whole = tiny_models.diarize(conversation_audio).segments
    calls = []
    fixed = models_module.merge_float_intervals
    monkeypatch.setattr(models_module, "merge_float_intervals", lambda *a, **k: calls.append(1) or fixed(*a, **k))
    monkeypatch.setattr(models_module, "NEMO_INTERVAL_LIMIT_SECONDS", 1.0)  # this audio counts as that long
    assert tiny_models.diarize(conversation_audio).segments == whole
    assert calls  # NeMo's output lines went through the fixed merge
