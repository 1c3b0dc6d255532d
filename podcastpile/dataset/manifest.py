"""`manifest.json` and the `README.md` dataset card, rendered from the ledger's shard records.

Both list the live shard files explicitly (not a glob): a reader that follows them sees a
consistent dataset even while an export is running, and a file enters them only after it was
completely written and committed. Both are replaced atomically (staged, then moved over).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from podcastpile.dataset.destination import Destination
from podcastpile.dataset.schema import CONFIGS, SCHEMA_VERSION
from podcastpile.store.exports import ShardRecord

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "podcastpile-parquet"


def build_manifest(shards: Sequence[ShardRecord]) -> dict[str, Any]:
    """The manifest for a dataset whose shards (live and retired) are `shards`."""
    live = sorted((shard for shard in shards if shard.removed_generation is None), key=lambda s: s.name)
    configs: dict[str, Any] = {}
    for config in CONFIGS:
        files = [shard.files[config] for shard in live if config in shard.files]
        configs[config] = {
            "rows": sum(file["rows"] for file in files),
            "bytes": sum(file["bytes"] for file in files),
            "files": [file["path"] for file in files],
        }
    generations: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "shards_added": [], "shards_removed": [], "episodes_added": 0,
            "episodes_replaced": 0, "episodes_carried": 0,
        }
    )
    for shard in sorted(shards, key=lambda s: s.name):
        added = generations[shard.generation]
        added["shards_added"].append(shard.name)
        # `replaced` rows are new results of episodes an earlier generation held; `carried`
        # rows were copied unchanged from a shard this generation rewrote.
        added["episodes_added"] += shard.episodes - shard.carried - shard.replaced
        added["episodes_replaced"] += shard.replaced
        added["episodes_carried"] += shard.carried
        if shard.removed_generation is not None:
            generations[shard.removed_generation]["shards_removed"].append(shard.name)
    audio_seconds = sum(shard.audio_seconds for shard in live)
    return {
        "provenance": _provenance(live),
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": max(generations, default=0),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "episodes": configs["episodes"]["rows"],
        "audio_hours": audio_seconds / 3600.0,
        "bytes": sum(config["bytes"] for config in configs.values()),
        "configs": configs,
        "shards": [
            {
                "name": shard.name,
                "generation": shard.generation,
                "episodes": shard.episodes,
                "audio_hours": shard.audio_seconds / 3600.0,
                "files": shard.files,
            }
            for shard in live
        ],
        "generations": [
            {"generation": number, **summary} for number, summary in sorted(generations.items())
        ],
        "schema": {
            config: [f"{field.name}: {field.type}" for field in schema]
            for config, (schema, _) in CONFIGS.items()
        },
    }


def _provenance(live: Sequence[ShardRecord]) -> dict[str, Any]:
    """What the live rows are: archived or live downloads, and the models that made them.

    Shards written before this was recorded count as `unrecorded`.
    """
    total = {"archived": 0, "live": 0, "unrecorded": 0, "asr_models": {}, "diar_models": {}}
    for shard in live:
        recorded = shard.files.get("episodes", {}).get("provenance")
        if recorded is None:
            total["unrecorded"] += shard.episodes
            continue
        total["archived"] += recorded["archived"]
        total["live"] += shard.episodes - recorded["archived"]
        for key in ("asr_models", "diar_models"):
            for model, count in recorded[key].items():
                total[key][model] = total[key].get(model, 0) + count
    return total


def _models(counts: dict[str, int]) -> str:
    return ", ".join(f"`{model}` ({count:,})" for model, count in sorted(counts.items())) or "none yet"


def _sources(provenance: dict[str, Any]) -> str:
    lines = [
        f"- audio: {provenance['archived']:,} episodes from Internet Archive copies (`archive_url` "
        f"set), {provenance['live']:,} downloaded from the live URL (`archive_url` empty: hosts "
        "splice dynamic ads, so that audio may differ from what others download)",
    ]
    if provenance["unrecorded"]:
        lines.append(f"- {provenance['unrecorded']:,} episodes are in shards written before this was recorded")
    lines.append(f"- ASR models (episodes): {_models(provenance['asr_models'])}")
    lines.append(f"- diarization models (episodes): {_models(provenance['diar_models'])}")
    return "\n".join(lines)


def _yaml_string(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no YAML library needed.
    return json.dumps(value)


def build_card(manifest: dict[str, Any]) -> str:
    """The dataset card: YAML front matter with `configs`/`data_files`, then a description."""
    lines = ["---", "pretty_name: Podcast Pile", "task_categories:", "- automatic-speech-recognition"]
    lines += ["tags:", "- speech", "- podcasts", "- diarization"]
    configs = [(name, config) for name, config in manifest["configs"].items() if config["files"]]
    if configs:
        lines.append("configs:")
        for index, (name, config) in enumerate(configs):
            lines.append(f"- config_name: {name}")
            if index == 0:
                lines.append("  default: true")
            lines += ["  data_files:", "  - split: train", "    path:"]
            lines += [f"    - {_yaml_string(path)}" for path in config["files"]]
    lines.append("---")
    hours = manifest["audio_hours"]
    body = f"""
# Podcast Pile

Podcast episodes with speaker turns and word timings: who speaks when (diarization) and
what they say (ASR), by the NeMo models listed below.

- episodes: {manifest["episodes"]:,}; audio: {hours:,.2f} hours
{_sources(manifest["provenance"])}
- generation {manifest["generation"]}, schema version {manifest["schema_version"]}
- `manifest.json` lists every shard with its rows, bytes and hours, and what each generation
  added, replaced (episodes whose result was reprocessed) and removed.

## Configurations

- `episodes` (default): one row per episode; `turns` holds the speaker turns, each with its
  `words` (word, start, end); `segments` is the raw diarization; times are seconds.
- `turns`: one row per speaker turn (with `episode_id` and `turn_index`), from the same rows.

```python
from datasets import load_dataset
episodes = load_dataset("path/or/repo")                    # default configuration
turns = load_dataset("path/or/repo", "turns", streaming=True)
```

Shards are zstd Parquet with bounded row groups (by default at most 1,000 episodes or 32 MB
of Arrow data), so streaming readers fetch bounded pieces. Read the files listed above or in `manifest.json`: an export in
progress stages files under `.incomplete/` and publishes them only when complete.
With pandas or duckdb, read a configuration's folder (the root also holds this card):
`pd.read_parquet("dataset/data/episodes")`.
"""
    return "\n".join(lines) + "\n" + body


def publish_manifest(destination: Destination, shards: Sequence[ShardRecord]) -> dict[str, Any]:
    """Write `manifest.json`, then `README.md`, each atomically; return the manifest."""
    manifest = build_manifest(shards)
    destination.write_atomically(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    destination.write_atomically(CARD, build_card(manifest).encode())
    return manifest
