"""Words (from one ASR pass) + diarization segments → speaker turns.

Rules, in order:
1. A word goes to the speaker whose segments overlap it the longest.
2. A word that overlaps no segment (in a gap, or with zero length on a boundary) goes to the
   speaker whose segment is nearest in time.
3. Ties (overlapping speech, equal distances) are broken deterministically: the speaker of the
   previous word first (so a turn is not split by a backchannel it overlaps), then the speaker
   who appeared first in the episode, then the label.
4. Consecutive words of one speaker form a turn.
With no segments at all (the diarizer heard nobody) every word goes to `FALLBACK_SPEAKER`.
Every word lands in exactly one turn; turns come sorted by start.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from podcastpile.speech.result import Segment, Word

FALLBACK_SPEAKER = "speaker_0"


@dataclass
class SpeakerTurn:
    """Consecutive words of one speaker. `end` may be clamped; see `merge_words`."""

    speaker: str
    words: list[Word] = field(default_factory=list)
    end_limit: float | None = None

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        end = max(word.end for word in self.words)
        return end if self.end_limit is None else max(self.start, min(end, self.end_limit))

    @property
    def text(self) -> str:
        return " ".join(word.word for word in self.words)


def normalize_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Drop empty segments and merge overlapping or touching segments of the same speaker.

    Sortformer can emit adjacent pieces of one speaker; merging keeps overlap sums honest.
    """
    by_speaker: dict[str, list[Segment]] = {}
    for segment in sorted(segments, key=lambda s: (s.speaker, s.start, s.end)):
        if segment.end <= segment.start:
            continue
        merged = by_speaker.setdefault(segment.speaker, [])
        if merged and segment.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Segment(speaker=last.speaker, start=last.start, end=max(last.end, segment.end))
        else:
            merged.append(segment)
    return sorted((s for group in by_speaker.values() for s in group), key=lambda s: (s.start, s.end, s.speaker))


# Times are compared at microsecond resolution so float noise (1.1 - 1.0 != 0.1) cannot decide a tie.
_DIGITS = 6


def _overlap(word: Word, segment: Segment) -> float:
    return round(max(0.0, min(word.end, segment.end) - max(word.start, segment.start)), _DIGITS)


def _distance(word: Word, segment: Segment) -> float:
    """Gap between the word and the segment; 0 if they touch or overlap."""
    return round(max(0.0, segment.start - word.end, word.start - segment.end), _DIGITS)


def assign_speaker(
    word: Word, segments: Sequence[Segment], previous: str | None, first_seen: dict[str, float]
) -> str:
    """The speaker for one word (rules 1–3 of the module docstring). `segments` must be non-empty."""
    overlap: dict[str, float] = {}
    for segment in segments:
        overlap[segment.speaker] = overlap.get(segment.speaker, 0.0) + _overlap(word, segment)
    overlap = {speaker: round(value, _DIGITS) for speaker, value in overlap.items()}
    best = max(overlap.values())
    if best > 0.0:
        candidates = [speaker for speaker, value in overlap.items() if value == best]
    else:
        distance: dict[str, float] = {}
        for segment in segments:
            d = _distance(word, segment)
            distance[segment.speaker] = min(distance.get(segment.speaker, d), d)
        nearest = min(distance.values())
        candidates = [speaker for speaker, value in distance.items() if value == nearest]
    if previous in candidates:
        return previous  # type: ignore[return-value]
    return min(candidates, key=lambda speaker: (first_seen[speaker], speaker))


class _SegmentIndex:
    """Each speaker's segments sorted, to hand `assign_speaker` only those that can matter.

    For one word that is, per speaker, the segments overlapping it plus the nearest one on
    each side: the same overlap sums and nearest distances as the full list, so the same
    answer, in O(log n) per word instead of O(n) (a 6 h episode has ~60k words and thousands
    of segments: minutes of Python otherwise). After `normalize_segments` one speaker's
    segments do not overlap, so their starts and ends are both sorted.
    """

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.by_speaker: dict[str, list[Segment]] = {}
        for segment in segments:
            self.by_speaker.setdefault(segment.speaker, []).append(segment)
        self.starts = {k: [s.start for s in v] for k, v in self.by_speaker.items()}
        self.ends = {k: [s.end for s in v] for k, v in self.by_speaker.items()}

    def around(self, word: Word) -> list[Segment]:
        found: list[Segment] = []
        for speaker, segments in self.by_speaker.items():
            first = bisect_right(self.ends[speaker], word.start)  # first ending after the word starts
            last = bisect_left(self.starts[speaker], word.end)  # first starting at/after its end
            found.extend(segments[max(0, first - 1):min(len(segments), last + 1)])
        return found


def merge_words(words: Sequence[Word], segments: Sequence[Segment]) -> list[SpeakerTurn]:
    """Group `words` into speaker turns using `segments` (see the module docstring for the rules).

    Words are taken in time order (start, then end; ASR output already is; words with equal
    times keep the ASR's order). If two turns of
    one speaker would overlap (only possible when the ASR's word spans overlap), the earlier
    turn's `end` is clamped to the later one's start, so a speaker's turns never overlap.
    """
    ordered = sorted(words, key=lambda w: (w.start, w.end))
    clean = normalize_segments(segments)
    first_seen: dict[str, float] = {}
    for segment in clean:
        first_seen.setdefault(segment.speaker, segment.start)
    nearby = _SegmentIndex(clean)
    turns: list[SpeakerTurn] = []
    previous: str | None = None
    for word in ordered:
        speaker = assign_speaker(word, nearby.around(word), previous, first_seen) if clean else FALLBACK_SPEAKER
        if turns and turns[-1].speaker == speaker:
            turns[-1].words.append(word)
        else:
            turns.append(SpeakerTurn(speaker=speaker, words=[word]))
        previous = speaker
    next_start: dict[str, float] = {}
    for turn in reversed(turns):
        if turn.speaker in next_start:
            turn.end_limit = next_start[turn.speaker]
        next_start[turn.speaker] = turn.start
    return turns
