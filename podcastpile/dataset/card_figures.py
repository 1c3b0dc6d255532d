"""The card's figures: added up from the live shards, written as YAML for the Hub and as prose.

YAML keys (the card's front matter; documented in docs/dataset.md and in the card itself):

- `language`: the Hub's own key, the rows' language codes (what the Hub filters datasets by);
- `podcastpile_stats`: this project's figures, each a plain number, list or mapping:
  `episodes`, `turns`, `audio_hours` (episode audio), `turn_hours` (sum of turn spans),
  `hours_by_language` and `episodes_by_language`, `turn_duration_seconds` and `dnsmos_ovrl`
  (`bin_edges`, `turns` per bin; the last bin is open, `dnsmos_ovrl` counts the turns with a
  score and gives `turns_without_score`), `speakers_per_episode` (count → episodes),
  `episodes_without_stats` (in shards written before these figures were kept), `pictures`,
  and for a filtered release `filter` (`where`, `episodes_kept`, `episodes_left_out`,
  `hours_kept`, `hours_left_out`, and both hours by language).

Hours have six decimals and no exponent: YAML 1.1 readers (PyYAML) take `1e-05` for a string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from podcastpile.dataset import pictures as card_pictures
from podcastpile.dataset import stats
from podcastpile.store.exports import ShardRecord

STATS_KEY = "podcastpile_stats"
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def dataset_figures(live: Sequence[ShardRecord]) -> dict[str, Any]:
    """The live shards' figures added up, in name order (so float sums are the same each time),
    plus `unrecorded`: the episodes of shards without usable figures."""
    total = stats.empty()
    unrecorded = 0
    for shard in sorted(live, key=lambda s: s.name):
        figures = shard.files.get("episodes", {}).get("stats")
        if stats.comparable(figures):
            stats.merge(total, figures)
        else:
            unrecorded += shard.episodes
    return {**total, "unrecorded": unrecorded}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600.0:.6f}"


def _flow(mapping: Mapping[str, Any], value: Any = json.dumps) -> str:
    """A YAML flow mapping with JSON-quoted keys, in a stable order (by key)."""
    return "{" + ", ".join(f"{json.dumps(key)}: {value(item)}" for key, item in sorted(mapping.items())) + "}"


def _speakers_order(item: tuple[str, int]) -> tuple[int, int, str]:
    name = item[0]
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def yaml_lines(figures: Mapping[str, Any], kept: Mapping[str, Any] | None, pictures: Sequence[str]) -> list[str]:
    """The card's front matter lines for `figures` (see the module docstring for the keys)."""
    languages = sorted(name for name in figures["seconds_by_language"] if _LANGUAGE_CODE.match(name))
    lines = (["language:", *(f"- {json.dumps(name)}" for name in languages)] if languages else [])
    speakers = ", ".join(f"{json.dumps(name)}: {count}" for name, count in sorted(
        figures["speakers"].items(), key=_speakers_order))
    lines += [
        f"{STATS_KEY}:",
        f"  episodes: {figures['episodes']}",
        f"  turns: {figures['turns']}",
        f"  audio_hours: {_hours(sum(figures['seconds_by_language'].values()))}",
        f"  turn_hours: {_hours(figures['turn_seconds'])}",
        f"  hours_by_language: {_flow(figures['seconds_by_language'], _hours)}",
        f"  episodes_by_language: {_flow(figures['episodes_by_language'])}",
        "  turn_duration_seconds:",
        f"    bin_edges: {json.dumps(list(figures['turn_seconds_edges']))}",
        f"    turns: {json.dumps(list(figures['turn_seconds_counts']))}",
        "  dnsmos_ovrl:",
        f"    bin_edges: {json.dumps(list(figures['dnsmos_ovrl_edges']))}",
        f"    turns: {json.dumps(list(figures['dnsmos_ovrl_counts']))}",
        f"    turns_without_score: {figures['turns_unscored']}",
        f"  speakers_per_episode: {{{speakers}}}",
        f"  episodes_without_stats: {figures['unrecorded']}",
        f"  pictures: {json.dumps(list(pictures))}",
    ]
    if kept is not None:
        left = kept["left_out"]
        lines += [
            "  filter:",
            f"    where: {json.dumps(kept['where'])}",
            f"    episodes_kept: {figures['episodes']}",
            f"    episodes_left_out: {int(sum(left['episodes_by_language'].values()))}",
            f"    hours_kept: {_hours(sum(figures['seconds_by_language'].values()))}",
            f"    hours_left_out: {_hours(sum(left['seconds_by_language'].values()))}",
            f"    hours_kept_by_language: {_flow(figures['seconds_by_language'], _hours)}",
            f"    hours_left_out_by_language: {_flow(left['seconds_by_language'], _hours)}",
        ]
    return lines


_CAPTIONS = {
    card_pictures.HOURS_BY_LANGUAGE: "Hours of audio by language",
    card_pictures.HOURS_KEPT: "Hours kept by the filter",
    card_pictures.TURN_DURATIONS: "Histogram of turn durations",
    card_pictures.DNSMOS_OVRL: "Histogram of DNSMOS OVRL over the turns with a score",
    card_pictures.SPEAKERS: "Speakers per episode",
}


def markdown(figures: Mapping[str, Any], kept: Mapping[str, Any] | None, pictures: Sequence[str]) -> str:
    """The card's `Figures` section: a few sentences, then the pictures."""
    audio = sum(figures["seconds_by_language"].values())
    lines = [
        "## Figures",
        "",
        f"- {figures['turns']:,} turns, {figures['turn_seconds'] / 3600:,.2f} hours of turn audio "
        f"in {audio / 3600:,.2f} hours of episodes",
    ]
    scored = sum(figures["dnsmos_ovrl_counts"])
    if figures["turns"]:
        lines.append(f"- DNSMOS OVRL scored for {scored:,} turns ({figures['turns_unscored']:,} without a "
                     "score: under 1 s of speech, or stored before scoring)")
    if kept is not None:
        left = sum(kept["left_out"]["seconds_by_language"].values())
        share = f" ({audio / (audio + left):.1%})" if audio + left else ""
        lines.append(f"- the filter `{kept['where']}` kept {audio / 3600:,.2f} of "
                     f"{(audio + left) / 3600:,.2f} hours{share}; left out: "
                     f"{int(sum(kept['left_out']['episodes_by_language'].values())):,} episodes "
                     f"({left / 3600:,.2f} hours), as counted by the latest export")
    if figures["unrecorded"]:
        lines.append(f"- {figures['unrecorded']:,} episodes are in shards written before these figures "
                     "were kept, and are not counted here")
    lines += [
        f"- the same numbers are in this card's YAML header under `{STATS_KEY}` (hours, counts, "
        "histogram `bin_edges` with one count per bin, the last bin open)",
        "",
    ]
    lines += [f"![{_CAPTIONS[path]}]({path})" for path in pictures]
    return "\n".join(lines) + "\n"
