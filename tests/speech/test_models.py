"""The model holder over real (tiny) NeMo models: diarize, transcribe, presets, attention, ids."""

from __future__ import annotations

import shutil

import pytest

from podcastpile.speech.audio import decode
from podcastpile.speech.nemo_models import (
    LATENCY_PRESETS,
    ModelLoadError,
    SpeechModels,
    apply_latency_preset,
    is_english,
    weights_fingerprint,
)
from tests.speech.conftest import FIXTURES


@pytest.fixture(scope="module")
def decoded(conversation):
    return decode(conversation["wav"])


def _overlap(a_start, a_end, b_start, b_end) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def test_diarizer_finds_who_spoke_when(tiny_models, decoded, conversation):
    diarization = tiny_models.diarize(decoded)
    segments = diarization.segments
    assert segments and segments == sorted(segments, key=lambda s: (s.start, s.end, s.speaker))
    assert {s.speaker for s in segments} == {"speaker_0", "speaker_1"}
    for turn in conversation["turns"]:
        length = turn["end"] - turn["start"]
        own = sum(_overlap(s.start, s.end, turn["start"], turn["end"]) for s in segments if s.speaker == turn["speaker"])
        other = sum(_overlap(s.start, s.end, turn["start"], turn["end"]) for s in segments if s.speaker != turn["speaker"])
        assert own >= 0.8 * length, f"{turn['speaker']} covers {own:.2f} of {length:.2f} s"
        assert other <= 0.2 * length
    assert diarization.model.endswith("tiny_diar.nemo")
    assert diarization.fingerprint.startswith("sha256:")


def test_transcribe_gives_the_words_with_times(tiny_models, decoded, conversation):
    transcript = tiny_models.transcribe(decoded)
    expected = " ".join(turn["text"] for turn in conversation["turns"])
    assert transcript.text == expected
    assert [w.word for w in transcript.words] == expected.split()
    for word, following in zip(transcript.words, transcript.words[1:]):
        assert 0.0 <= word.start <= word.end <= decoded.duration + 0.1
        assert word.start <= following.start
    assert transcript.language == "en"
    assert transcript.model.endswith("tiny_asr.nemo")


def test_models_are_loaded_once_and_reused(tiny_models):
    assert tiny_models.asr() is tiny_models.asr("en-US")
    assert tiny_models.diarizer() is tiny_models.diarizer()


def test_fingerprints_identify_the_weights(tiny_models):
    asr, diar = tiny_models.asr(), tiny_models.diarizer()
    assert asr.fingerprint == weights_fingerprint(asr.model)
    assert asr.fingerprint != diar.fingerprint
    assert len(asr.fingerprint) == len("sha256:") + 16


def test_latency_presets_are_applied(tiny_models, decoded):
    modules = tiny_models.diarizer().model.sortformer_modules
    for key, value in LATENCY_PRESETS["very-high"].items():  # the default, set at load
        assert getattr(modules, key) == value
    try:
        apply_latency_preset(tiny_models.diarizer().model, "low")  # 6-frame chunks: many streaming steps
        assert modules.chunk_len == 6 and modules.fifo_len == 188
        segments = tiny_models.diarize(decoded).segments
        assert all(0.0 <= s.start < s.end <= decoded.duration + 0.1 for s in segments)
    finally:
        apply_latency_preset(tiny_models.diarizer().model, "very-high")
    with pytest.raises(ValueError, match="diar_latency"):
        SpeechModels(diar_latency="medium")


def test_long_audio_switches_to_local_attention_and_back(tiny_models, decoded):
    loaded = tiny_models.asr()
    full = tiny_models.transcribe(decoded)
    threshold = tiny_models.local_attention_above_seconds
    try:
        tiny_models.local_attention_above_seconds = decoded.duration / 2  # this audio counts as long
        local = tiny_models.transcribe(decoded)
        assert loaded.local_attention
        assert loaded.model.cfg.encoder.self_attention_model == "rel_pos_local_attn"
        # The tiny model was trained with a [4, 4] context: local attention keeps it (a model
        # trained with full attention, as Parakeet, gets NVIDIA's [128, 128]; see local_context),
        # and then computes the same function in linear memory: the same words.
        assert list(loaded.model.cfg.encoder.att_context_size) == [4, 4]
        assert all(w.start <= w.end for w in local.words)
        assert local.local_attention and local.words == full.words
    finally:
        tiny_models.local_attention_above_seconds = threshold
    again = tiny_models.transcribe(decoded)  # short again: full attention restored
    assert not loaded.local_attention
    assert loaded.model.cfg.encoder.self_attention_model == "rel_pos"
    assert again.words == full.words


def test_language_picks_the_model(tmp_path, decoded):
    multilingual = tmp_path / "tiny_multilingual.nemo"
    shutil.copy(FIXTURES / "tiny_asr.nemo", multilingual)
    models = SpeechModels(
        diar_model=str(FIXTURES / "tiny_diar.nemo"), asr_model=str(FIXTURES / "tiny_asr.nemo"),
        asr_model_multilingual=str(multilingual), device="cpu",
    )
    transcript = models.transcribe(decoded, language="de")
    assert transcript.model == str(multilingual) and transcript.language == "de"
    assert models.asr("en").name.endswith("tiny_asr.nemo")


@pytest.mark.parametrize("tag, english", [(None, True), ("", True), ("en", True), ("en-US", True),
                                          ("EN_gb", True), ("de", False), ("fr-CA", False), ("eng", True)])
def test_is_english(tag, english):
    assert is_english(tag) is english


def test_missing_model_file_is_one_clear_error():
    models = SpeechModels(asr_model="/nonexistent/model.nemo", device="cpu")
    with pytest.raises(ModelLoadError, match="cannot load asr model '/nonexistent/model.nemo'") as caught:
        models.asr()
    assert "\n" not in str(caught.value)
