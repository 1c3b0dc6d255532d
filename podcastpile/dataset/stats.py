"""The numbers the dataset card shows: counted per shard as it is written, added up per dataset.

Every figure is additive (sums, and counts over fixed histogram bins), so a shard's figures are
counted once, from the very rows it holds, and kept in the ledger with the shard (beside its
`provenance`); the card adds up the live shards' figures without reading any Parquet again.
A shard written before this existed, or with other bins, has no usable figures: the card says
how many episodes that leaves out rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Histogram bin edges. The last bin is open (`>= edges[-1]`); values below the first edge fall
# into the first bin. Changing an edge makes older shards' counts incomparable (see `merge`).
TURN_SECONDS_EDGES: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 120, 300)
# DNSMOS P.835 scores lie in [1, 5]; 3.0 is the bar Emilia keeps turns above.
DNSMOS_EDGES: tuple[float, ...] = tuple(1.0 + 0.25 * step for step in range(16))
UNKNOWN = "unknown"  # the language or speaker count of a row that has none


def empty() -> dict[str, Any]:
    """Figures of no rows, with this version's bins."""
    return {
        "episodes": 0,
        "seconds_by_language": {},
        "episodes_by_language": {},
        "turns": 0,
        "turn_seconds": 0.0,
        "turn_seconds_edges": list(TURN_SECONDS_EDGES),
        "turn_seconds_counts": [0] * len(TURN_SECONDS_EDGES),
        "dnsmos_ovrl_edges": list(DNSMOS_EDGES),
        "dnsmos_ovrl_counts": [0] * len(DNSMOS_EDGES),
        "turns_unscored": 0,
        "speakers": {},
    }


def _bin_counts(values: np.ndarray, edges: tuple[float, ...]) -> list[int]:
    # searchsorted(side="right") - 1 is the index of the last edge <= value; clip folds values
    # below the first edge into the first bin (the last bin is open anyway).
    index = np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(edges) - 1)
    return np.bincount(index, minlength=len(edges)).astype(int).tolist()


def _add_counts(into: dict[str, Any], key: str, counts: Iterable[tuple[str, Any]]) -> None:
    for name, value in counts:
        into[key][name] = into[key].get(name, 0) + value


def add_rows(figures: dict[str, Any], episodes: pa.Table) -> None:
    """Count an `episodes` table (the writer's input) into `figures`."""
    if not episodes.num_rows:
        return
    figures["episodes"] += episodes.num_rows
    language = episodes.column("language").fill_null(UNKNOWN).to_pylist()
    duration = episodes.column("duration").fill_null(0.0).to_numpy(zero_copy_only=False)
    by_language: dict[str, float] = {}
    counted: dict[str, int] = {}
    for name, seconds in zip(language, duration.tolist()):
        by_language[name] = by_language.get(name, 0.0) + seconds
        counted[name] = counted.get(name, 0) + 1
    _add_counts(figures, "seconds_by_language", by_language.items())
    _add_counts(figures, "episodes_by_language", counted.items())
    speakers = pc.value_counts(episodes.column("num_speakers")).to_pylist()
    _add_counts(figures, "speakers", (
        (UNKNOWN if item["values"] is None else str(item["values"]), item["counts"]) for item in speakers
    ))

    turns = pc.list_flatten(episodes.column("turns"))
    if not len(turns):
        return
    turns = turns.combine_chunks() if isinstance(turns, pa.ChunkedArray) else turns
    start = turns.field("start").fill_null(0.0).to_numpy(zero_copy_only=False)
    end = turns.field("end").fill_null(0.0).to_numpy(zero_copy_only=False)
    seconds = np.maximum(end - start, 0.0)
    figures["turns"] += len(turns)
    figures["turn_seconds"] += float(seconds.sum())
    _add_list(figures, "turn_seconds_counts", _bin_counts(seconds, TURN_SECONDS_EDGES))
    names = {turns.type.field(index).name for index in range(turns.type.num_fields)}
    ovrl = turns.field("dnsmos_ovrl") if "dnsmos_ovrl" in names else pa.nulls(len(turns), pa.float64())
    scored = ovrl.drop_null().to_numpy(zero_copy_only=False)
    figures["turns_unscored"] += len(turns) - len(scored)
    _add_list(figures, "dnsmos_ovrl_counts", _bin_counts(scored, DNSMOS_EDGES))


def _add_list(figures: dict[str, Any], key: str, counts: list[int]) -> None:
    figures[key] = [held + new for held, new in zip(figures[key], counts)]


def comparable(figures: Mapping[str, Any] | None) -> bool:
    """Whether a shard's recorded figures can be added to this version's (same bins)."""
    return bool(figures) and (
        list(figures.get("turn_seconds_edges", ())) == list(TURN_SECONDS_EDGES)
        and list(figures.get("dnsmos_ovrl_edges", ())) == list(DNSMOS_EDGES)
    )


def merge(total: dict[str, Any], figures: Mapping[str, Any]) -> None:
    """Add one shard's figures (`comparable` ones) to `total`."""
    for key in ("episodes", "turns", "turn_seconds", "turns_unscored"):
        total[key] += figures[key]
    for key in ("seconds_by_language", "episodes_by_language", "speakers"):
        _add_counts(total, key, figures[key].items())
    for key in ("turn_seconds_counts", "dnsmos_ovrl_counts"):
        _add_list(total, key, list(figures[key]))


def filtered_out(table: pa.Table, keep: pa.Array) -> dict[str, dict[str, float]]:
    """What a filter left out of an `episodes` table: episodes and seconds by language."""
    dropped = table.filter(pc.invert(keep))
    episodes: dict[str, float] = {}
    seconds: dict[str, float] = {}
    language = dropped.column("language").fill_null(UNKNOWN).to_pylist()
    duration = dropped.column("duration").fill_null(0.0).to_pylist()
    for name, length in zip(language, duration):
        episodes[name] = episodes.get(name, 0) + 1
        seconds[name] = seconds.get(name, 0.0) + length
    return {"episodes_by_language": episodes, "seconds_by_language": seconds}


def add_filtered(total: dict[str, dict[str, float]], more: Mapping[str, Mapping[str, float]]) -> None:
    """Add `filtered_out` figures of another table to `total`."""
    for key in ("episodes_by_language", "seconds_by_language"):
        bucket = total.setdefault(key, {})
        for name, value in more.get(key, {}).items():
            bucket[name] = bucket.get(name, 0) + value
