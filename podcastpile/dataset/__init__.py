"""The Parquet dataset: schema, shard writer, manifest and dataset card, incremental export.

Plain Python (no Prefect): `export_dataset` is what `ppcli export` and the export flow call.
For readers: `turn_audio(row)` and `add_turn_audio` (a turn's audio from its row, see
`podcastpile.dataset.loader`) and `where(text)` (a row filter, see `podcastpile.dataset.filters`).
"""

from __future__ import annotations

from typing import Any

# Loaded on first use: `import podcastpile.dataset` stays cheap for the CLI's other commands.
_LAZY = {
    "turn_audio": "podcastpile.dataset.loader",
    "add_turn_audio": "podcastpile.dataset.loader",
    "where": "podcastpile.dataset.filters",
}
__all__ = ["add_turn_audio", "turn_audio", "where"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'podcastpile.dataset' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_LAZY[name]), name)
