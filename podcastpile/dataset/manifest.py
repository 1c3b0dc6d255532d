"""`manifest.json` and the `README.md` dataset card, rendered from the ledger's shard records.

The card's figures and pictures (`card_figures.py`, `pictures.py`) come from the figures each
shard recorded as it was written, so rendering the card reads no Parquet.

Both list the live shard files explicitly (not a glob): a reader that follows them sees a
consistent dataset even while an export is running, and a file enters them only after it was
completely written and committed. Both are replaced atomically (staged, then moved over).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from podcastpile.dataset import card_figures
from podcastpile.dataset.destination import Destination
from podcastpile.dataset.pictures import publish_pictures, render
from podcastpile.dataset.schema import CONFIGS, SCHEMA_VERSION, configs_for
from podcastpile.store.exports import ShardRecord

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "podcastpile-parquet"


@dataclass(frozen=True)
class Layout:
    """What a dataset's rows are, beyond the schema version: every generation must agree on it."""

    audio: str | None = None  # the turns' audio codec (`flac`, `opus`); None: no audio column
    audio_pad: float = 0.0  # seconds of padding around each turn's audio
    where: str | None = None  # the filter the exported episodes passed
    schema_version: int = SCHEMA_VERSION  # a dataset keeps the version it was begun with

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Layout:
        """The layout a manifest records (one written before layouts existed: none)."""
        found = manifest.get("layout") or {}
        return cls(audio=found.get("audio"), audio_pad=float(found.get("audio_pad") or 0.0), where=found.get("where"),
                   schema_version=int(manifest.get("schema_version") or 1))

    def describe(self) -> str:
        """The layout as the export options that make it."""
        audio = "no audio"
        if self.audio:
            audio = f"--audio {self.audio}" + (f" --audio-pad {self.audio_pad:g}" if self.audio_pad else "")
        version = f" (schema version {self.schema_version})" if self.schema_version != SCHEMA_VERSION else ""
        return f"{audio}, " + (f"--where {json.dumps(self.where)}" if self.where else "no filter") + version


def build_manifest(
    shards: Sequence[ShardRecord], layout: Layout = Layout(), left_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest for a dataset whose shards (live and retired) are `shards`.

    `left_out`: for a filtered release, what its filter left out (`stats.filtered_out`).
    """
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
    kept = None
    if layout.where:
        kept = {"where": layout.where, "left_out": {
            "episodes_by_language": dict((left_out or {}).get("episodes_by_language", {})),
            "seconds_by_language": dict((left_out or {}).get("seconds_by_language", {})),
        }}
    return {
        "provenance": _provenance(live),
        "statistics": card_figures.dataset_figures(live),
        "filter": kept,
        "format": FORMAT,
        "schema_version": layout.schema_version,
        "layout": {key: value for key, value in asdict(layout).items() if key != "schema_version"},
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
            for config, (schema, _) in configs_for(layout.audio is not None, layout.schema_version).items()
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


def _layout_lines(layout: Mapping[str, Any]) -> str:
    """The card's sentences on the turns' audio and on the filter the rows passed."""
    lines = []
    if layout.get("audio"):
        pad = layout.get("audio_pad") or 0.0
        padding = f", padded by {pad:g} s on each side (clamped to the episode)" if pad else ""
        lines.append(
            f"- `turns` rows carry `audio`: the turn's span of the archived episode, 16 kHz mono, "
            f"{layout['audio']}{padding}; `datasets` reads it as an `Audio` feature."
        )
    else:
        lines.append(
            "- no audio in the files: `podcastpile.dataset.turn_audio(row)` fetches a turn's audio "
            "from the archived copy its row names (checked against `audio_sha256`)."
        )
    if layout.get("where"):
        lines.append(f"- a filtered release: only episodes with `{layout['where']}`.")
    return "\n".join(lines)


def build_card(manifest: dict[str, Any]) -> str:
    """The dataset card: YAML front matter with `configs`/`data_files`, then a description."""
    lines = ["---", "pretty_name: Podcast Pile", "task_categories:", "- automatic-speech-recognition"]
    lines += ["tags:", "- speech", "- podcasts", "- diarization"]
    pictures = manifest.get("pictures") or []
    lines += card_figures.yaml_lines(manifest["statistics"], manifest.get("filter"), pictures)
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
{_layout_lines(manifest.get("layout") or {})}

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

{card_figures.markdown(manifest["statistics"], manifest.get("filter"), pictures)}"""
    return "\n".join(lines) + "\n" + body


def publish_manifest(
    destination: Destination, shards: Sequence[ShardRecord], layout: Layout = Layout(),
    left_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the card's pictures, `manifest.json`, then `README.md`, each atomically; return
    the manifest. The pictures come first, so the card never names a picture not yet there.

    `left_out` (a filtered release): what the filter left out, as counted by a run that went
    through every pending episode; None keeps the figures the current manifest has.
    """
    if layout.where and left_out is None:
        left_out = _recorded_left_out(destination, layout.where)
    manifest = build_manifest(shards, layout, left_out)
    pictures = render(manifest["statistics"], manifest["filter"])
    publish_pictures(destination, pictures)
    manifest["pictures"] = list(pictures)
    destination.write_atomically(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    destination.write_atomically(CARD, build_card(manifest).encode())
    return manifest


def _recorded_left_out(destination: Destination, where: str) -> dict[str, Any] | None:
    """What the current manifest says the filter `where` left out (None: nothing recorded)."""
    text = destination.read_text(MANIFEST)
    if text is None:
        return None
    recorded = json.loads(text).get("filter") or {}
    return recorded.get("left_out") if recorded.get("where") == where else None
