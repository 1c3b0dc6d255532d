"""The whole speech core on the synthetic conversation: the right words under the right speakers."""

from __future__ import annotations

import hashlib
import json

import pytest

from podcastpile.config import load_settings
from podcastpile.errors import PermanentError
from podcastpile.speech.result import EpisodeResult
from podcastpile.speech.pipeline import process_source
from podcastpile.version import code_version
from tests.loopback import LoopbackServer, Reply
from tests.speech.conftest import encode


@pytest.fixture(scope="module")
def settings():
    # The test servers are on 127.0.0.1, which the download guard refuses by default.
    return load_settings(env_file=None, download_timeout_seconds=5.0, download_max_bytes=10_000_000,
                         allow_private_addresses=True)


def expected_turns(conversation) -> list[tuple[str, str]]:
    return [(turn["speaker"], turn["text"]) for turn in conversation["turns"]]


def check_result(result: EpisodeResult, conversation, body: bytes) -> None:
    assert [(t.speaker, t.text) for t in result.turns] == expected_turns(conversation)
    assert result.text == " ".join(turn["text"] for turn in conversation["turns"])
    assert result.num_speakers == 2
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.md5 == hashlib.md5(body).hexdigest()
    assert result.audio_bytes == len(body)
    assert result.duration == pytest.approx(conversation["duration"], abs=0.05)
    assert result.language == "en" and result.code_version == code_version()
    assert result.asr_fingerprint.startswith("sha256:") and result.diar_fingerprint.startswith("sha256:")
    assert result.processing_seconds > 0 and result.rtf == pytest.approx(result.processing_seconds / result.duration, rel=0.01)
    assert result.segments and {s.speaker for s in result.segments} == {"speaker_0", "speaker_1"}
    for turn, truth in zip(result.turns, conversation["turns"]):
        # Each turn sits on its true span (within the tiny model's timing slack).
        assert turn.start >= truth["start"] - 0.6 and turn.end <= truth["end"] + 0.6
        assert -60 < turn.rms_dbfs < turn.peak_dbfs <= 0 and turn.clipped_ratio == 0.0
        # The tiny ASR's word times are loose, so a turn's span can reach into the pauses.
        assert 0.3 < turn.speech_ratio <= 1 and turn.vad_segments >= 1
        assert turn.overlap_ratio == 0.0 and turn.loudness_lufs is not None and turn.snr_db is not None
        speech_seconds = turn.speech_ratio * (turn.end - turn.start)
        if turn.dnsmos_ovrl is None:  # the ratio is stored to 4 decimals: allow for that
            assert speech_seconds < 1.0 + 1e-3
        else:
            assert speech_seconds > 1.0 - 1e-3 and 1.0 <= turn.dnsmos_ovrl <= 5.0
    # The VAD's speech over the duration: three turns with silence between them.
    spoken = sum(t["end"] - t["start"] for t in conversation["turns"])
    assert result.speech_ratio == pytest.approx(spoken / result.duration, abs=0.1)
    assert result.vad_segments == len(conversation["turns"]) and result.dnsmos_ovrl is not None
    assert result.dnsmos_model and result.vad_model and result.loudness_model
    assert EpisodeResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_local_wav(tiny_models, settings, conversation):
    result = process_source(str(conversation["wav"]), tiny_models, settings)
    check_result(result, conversation, conversation["wav"].read_bytes())
    assert result.audio_format == "wav/pcm_s16le"


def test_url_served_as_flac(tiny_models, settings, conversation, tmp_path):
    import soundfile

    samples, rate = soundfile.read(str(conversation["wav"]), dtype="float32")
    body = encode(tmp_path / "ep.flac", "flac", "flac", rate, samples)
    with LoopbackServer({"/web/2024id_/ep.flac": lambda r: Reply(200, body, {"Content-Type": "audio/flac"})}) as server:
        result = process_source(server.url("/web/2024id_/ep.flac"), tiny_models, settings)
    check_result(result, conversation, body)
    assert result.audio_format == "flac/flac"


def test_failures_pass_through_with_their_class(tiny_models, settings):
    with LoopbackServer({"/gone.mp3": lambda r: Reply(410, b"gone")}) as server:
        with pytest.raises(PermanentError) as caught:
            process_source(server.url("/gone.mp3"), tiny_models, settings)
    assert caught.value.code == "http-410"


def test_digital_silence_gives_no_turns(tiny_models, settings, tmp_path):
    import numpy as np
    import soundfile

    path = tmp_path / "silence.wav"
    soundfile.write(str(path), np.zeros(32000, np.float32), 16000, subtype="PCM_16")
    result = process_source(str(path), tiny_models, settings)
    assert (result.turns, result.segments, result.text, result.num_speakers) == ([], [], "", 0)
    assert result.duration == pytest.approx(2.0) and result.speech_ratio == 0.0
    assert result.vad_segments == 0 and result.dnsmos_ovrl is None and result.loudness_lufs is None
    assert result.rms_dbfs == result.peak_dbfs == -120.0
    assert EpisodeResult.from_dict(result.to_dict()) == result
