"""Words + diarization segments → speaker turns: table-driven cases plus invariants."""

from __future__ import annotations

import random

import pytest

from podcastpile.speech.merge import FALLBACK_SPEAKER, merge_words, normalize_segments
from podcastpile.speech.result import Segment, Word


def W(word: str, start: float, end: float) -> Word:
    return Word(word=word, start=start, end=end)


def S(speaker: str, start: float, end: float) -> Segment:
    return Segment(speaker=speaker, start=start, end=end)


A, B, C = "speaker_0", "speaker_1", "speaker_2"

# (name, words, segments, expected [(speaker, "text")])
CASES = [
    (
        "two speakers, clean turns",
        [W("hi", 0.1, 0.4), W("there", 0.5, 0.9), W("hello", 1.6, 2.0), W("back", 2.1, 2.4)],
        [S(A, 0.0, 1.0), S(B, 1.5, 2.5)],
        [(A, "hi there"), (B, "hello back")],
    ),
    (
        "word straddling a change goes to the larger overlap",
        [W("one", 0.1, 0.5), W("two", 0.8, 1.3), W("three", 1.5, 1.9)],
        [S(A, 0.0, 0.9), S(B, 0.9, 2.0)],  # "two": 0.1 s with A, 0.4 s with B
        [(A, "one"), (B, "two three")],
    ),
    (
        "word in a gap goes to the nearest segment",
        [W("a", 0.1, 0.3), W("gap", 1.05, 1.15), W("b", 2.1, 2.3)],
        [S(A, 0.0, 1.0), S(B, 2.0, 3.0)],  # "gap" is 0.05 s after A, 0.85 s before B
        [(A, "a gap"), (B, "b")],
    ),
    (
        "word in a gap nearer the next speaker",
        [W("a", 0.1, 0.3), W("gap", 1.8, 1.9), W("b", 2.1, 2.3)],
        [S(A, 0.0, 1.0), S(B, 2.0, 3.0)],
        [(A, "a"), (B, "gap b")],
    ),
    (
        "zero-length word on a boundary stays with the current speaker",
        [W("so", 0.2, 0.6), W("and", 1.0, 1.0), W("yes", 1.2, 1.6)],
        [S(A, 0.0, 1.0), S(B, 1.0, 2.0)],  # touches both; previous word's speaker wins the tie
        [(A, "so and"), (B, "yes")],
    ),
    (
        "word exactly on a boundary, equal overlap, no previous word: first speaker wins",
        [W("mid", 0.9, 1.1)],
        [S(B, 1.0, 2.0), S(A, 0.0, 1.0)],  # A appears first in time
        [(A, "mid")],
    ),
    (
        "a speaker who says one word (backchannel) inside the other's turn",
        [W("it", 0.0, 0.3), W("was", 0.4, 0.7), W("yeah", 1.0, 1.3), W("great", 1.6, 2.0)],
        [S(A, 0.0, 0.8), S(B, 0.95, 1.35), S(A, 1.5, 2.2)],
        [(A, "it was"), (B, "yeah"), (A, "great")],
    ),
    (
        "overlapping speech: the longer overlap wins",
        [W("talking", 1.0, 1.6), W("over", 1.7, 2.0)],
        [S(A, 0.0, 1.5), S(B, 1.2, 2.5)],  # "talking": A 0.5 s, B 0.4 s
        [(A, "talking"), (B, "over")],
    ),
    (
        "overlapping speech, equal overlap: the current speaker keeps the word",
        [W("start", 0.1, 0.5), W("both", 1.0, 1.5)],
        [S(A, 0.0, 2.0), S(B, 1.0, 2.0)],  # "both" fully inside A and B
        [(A, "start both")],
    ),
    (
        "overlapping speech, equal overlap, other order: still the current speaker",
        [W("start", 0.1, 0.5), W("both", 1.0, 1.5)],
        [S(B, 0.0, 2.0), S(A, 1.0, 2.0)],
        [(B, "start both")],
    ),
    (
        "one speaker only",
        [W("just", 0.0, 0.2), W("me", 0.3, 0.5), W("talking", 3.0, 3.4)],
        [S(A, 0.0, 1.0), S(A, 2.9, 3.5)],
        [(A, "just me talking")],
    ),
    (
        "no segments (diarizer heard nobody): everything to the fallback speaker",
        [W("quiet", 0.0, 0.4), W("words", 0.5, 0.9)],
        [],
        [(FALLBACK_SPEAKER, "quiet words")],
    ),
    ("no words at all", [], [S(A, 0.0, 1.0), S(B, 1.0, 2.0)], []),
    ("silence: no words, no segments", [], [], []),
    (
        "words out of order come out in time order",
        [W("second", 1.2, 1.5), W("first", 0.1, 0.4)],
        [S(A, 0.0, 1.0), S(B, 1.0, 2.0)],
        [(A, "first"), (B, "second")],
    ),
    (
        "three speakers, split same-speaker segments merge",
        [W("x", 0.1, 0.2), W("y", 0.5, 0.6), W("z", 1.1, 1.2), W("w", 2.1, 2.2)],
        [S(A, 0.0, 0.3), S(A, 0.3, 0.7), S(C, 1.0, 1.5), S(B, 2.0, 2.5)],
        [(A, "x y"), (C, "z"), (B, "w")],
    ),
]


@pytest.mark.parametrize("words, segments, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_merge_table(words, segments, expected):
    turns = merge_words(words, segments)
    assert [(t.speaker, t.text) for t in turns] == expected
    assert_invariants(words, turns)


def assert_invariants(words, turns):
    """Every word exactly once, turns sorted, a speaker's turns never overlap, spans cover words."""
    out = [w for t in turns for w in t.words]
    assert sorted(out, key=lambda w: (w.start, w.end, w.word)) == sorted(words, key=lambda w: (w.start, w.end, w.word))
    assert len(out) == len(words)
    assert [t.start for t in turns] == sorted(t.start for t in turns)
    for previous, current in zip(turns, turns[1:]):
        assert previous.speaker != current.speaker, "consecutive turns of one speaker should be one turn"
    by_speaker: dict[str, list] = {}
    for turn in turns:
        assert turn.start <= turn.end
        assert turn.words and turn.start == turn.words[0].start
        by_speaker.setdefault(turn.speaker, []).append(turn)
    for speaker_turns in by_speaker.values():
        for earlier, later in zip(speaker_turns, speaker_turns[1:]):
            assert earlier.end <= later.start


def test_turn_span_and_text():
    turns = merge_words([W("hello", 0.5, 0.9), W("world,", 1.0, 1.4)], [S(A, 0.0, 2.0)])
    (turn,) = turns
    assert (turn.start, turn.end, turn.text) == (0.5, 1.4, "hello world,")


def test_overlapping_asr_words_still_give_non_overlapping_turns_per_speaker():
    # Pathological ASR output: A's word runs past B's word and into A's next turn.
    words = [W("long", 0.0, 2.5), W("b", 1.2, 1.4), W("again", 2.0, 2.2)]
    segments = [S(A, 0.0, 1.0), S(B, 1.1, 1.5), S(A, 1.9, 3.0)]
    turns = merge_words(words, segments)
    assert [(t.speaker, t.text) for t in turns] == [(A, "long"), (B, "b"), (A, "again")]
    assert turns[0].end == 2.0  # clamped to A's next turn
    assert_invariants(words, turns)


def test_merge_is_deterministic_and_keeps_invariants_on_random_input():
    rng = random.Random(7)
    for _ in range(200):
        words, t = [], 0.0
        for index in range(rng.randint(0, 30)):
            t += rng.uniform(0.0, 0.5)
            length = rng.choice([0.0, rng.uniform(0.05, 0.6)])
            words.append(W(f"w{index}", round(t, 2), round(t + length, 2)))
            t += length
        segments = [
            S(rng.choice([A, B, C]), round(s := rng.uniform(0, t + 1), 2), round(s + rng.uniform(0, 3), 2))
            for _ in range(rng.randint(0, 8))
        ]
        first = merge_words(words, segments)
        # Segment order must not matter (words with equal times keep ASR order, so words stay put).
        again = merge_words(words, list(reversed(segments)))
        assert [(x.speaker, x.text) for x in first] == [(x.speaker, x.text) for x in again]
        assert_invariants(words, first)


def test_words_out_of_order_with_unique_times_give_the_same_turns():
    words = [W("a", 0.0, 0.2), W("b", 0.3, 0.5), W("c", 1.2, 1.4), W("d", 1.5, 1.7)]
    segments = [S(A, 0.0, 1.0), S(B, 1.0, 2.0)]
    shuffled = [words[2], words[0], words[3], words[1]]
    assert [(t.speaker, t.text) for t in merge_words(shuffled, segments)] == [(A, "a b"), (B, "c d")]


def test_normalize_segments_drops_empty_and_merges_same_speaker():
    merged = normalize_segments([S(A, 1.0, 2.0), S(A, 1.5, 3.0), S(B, 2.0, 2.0), S(B, 0.0, 0.5)])
    assert merged == [S(B, 0.0, 0.5), S(A, 1.0, 3.0)]
