"""The result of processing one episode: the shape the dataset rows will have.

Pydantic models so the store can round-trip them through JSON (`to_dict` / `from_dict`)
and so a malformed stored result fails loudly on read instead of half-working.
Times are seconds from the start of the audio; levels are dBFS (0 = full scale).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Word(_Model):
    """One recognised word with its time span."""

    word: str
    start: float
    end: float


class Segment(_Model):
    """One raw diarization segment: `speaker` was talking from `start` to `end`."""

    speaker: str
    start: float
    end: float


class SignalLevels(_Model):
    """Cheap level measures for filtering the dataset (see `podcastpile.speech.levels`)."""

    rms_dbfs: float = Field(description="Root-mean-square level, dBFS (floored at -120).")
    peak_dbfs: float = Field(description="Highest absolute sample, dBFS (floored at -120).")
    clipped_ratio: float = Field(description="Share of samples at or near full scale.")
    speech_ratio: float = Field(
        description="Share of the span that Silero VAD hears as speech (turn: its span; episode: "
        "the whole audio). Results stored before the quality scores: time covered by words "
        "(turn) or by turns (episode)."
    )


class QualityScores(SignalLevels):
    """Model-based quality scores (see `podcastpile.speech.quality`). Each defaults to None so
    results stored before they existed still load; None also means not measurable there."""

    dnsmos_sig: float | None = Field(None, description="DNSMOS P.835 speech signal quality, 1-5; "
                                     "None with under 1 s of speech.")
    dnsmos_bak: float | None = Field(None, description="DNSMOS P.835 background noise quality, 1-5.")
    dnsmos_ovrl: float | None = Field(None, description="DNSMOS P.835 overall quality, 1-5.")
    vad_segments: int | None = Field(None, description="Speech segments Silero VAD finds in the span.")
    loudness_lufs: float | None = Field(None, description="ITU-R BS.1770 integrated loudness, LUFS; "
                                        "None under 400 ms or for silence.")
    snr_db: float | None = Field(None, description="Power of VAD speech over VAD non-speech, dB.")
    overlap_ratio: float | None = Field(None, description="Share of the span where the diarizer "
                                        "has two or more speakers active.")


class Turn(QualityScores):
    """Consecutive words of one speaker, with the levels of that stretch of audio."""

    speaker: str
    start: float
    end: float
    text: str
    words: list[Word]


class EpisodeResult(QualityScores):
    """Everything one episode yields: audio facts, models used, turns, raw segments, levels."""

    duration: float = Field(description="Decoded audio length, seconds.")
    sha256: str = Field(description="SHA-256 of the original bytes, hex.")
    md5: str = Field(description="MD5 of the original bytes, hex.")
    audio_format: str = Field(description="Container/codec probed from the bytes, e.g. mp3, mov/aac.")
    audio_bytes: int = Field(description="Size of the original file.")
    decode_errors: int = Field(
        0, description="Packets that failed to decode and were skipped (each a gap in the audio)."
    )  # a default: results stored before the field existed still load
    language: str = Field(description="Language the ASR model was chosen for, e.g. en.")
    num_speakers: int
    text: str = Field(description="All turns' text, in order.")
    turns: list[Turn]
    segments: list[Segment]
    asr_model: str
    asr_fingerprint: str
    diar_model: str
    diar_fingerprint: str
    dnsmos_model: str | None = Field(None, description="Quality models' ids, versions and weight digests.")
    vad_model: str | None = None
    loudness_model: str | None = None
    code_version: str
    processing_seconds: float = Field(
        description="Wall time to decode, diarize and transcribe, seconds (not download or model load)."
    )
    rtf: float = Field(description="Real-time factor: processing_seconds / duration.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (only str, int, float, list, dict)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodeResult":
        """Rebuild a result from `to_dict()`'s output; raises pydantic.ValidationError if malformed."""
        return cls.model_validate(data)
