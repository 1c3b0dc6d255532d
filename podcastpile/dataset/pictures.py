"""The dataset card's pictures: PNG bar charts of the card's figures, drawn with matplotlib's Agg.

No display is needed: figures are drawn on `matplotlib.figure.Figure` objects with the Agg
canvas, never through pyplot (whose global state and backend choice belong to the caller).
matplotlib is imported on first use (it takes about a second), so only card writing pays it.

The bytes are a function of the figures alone: matplotlib's default style (not the user's
matplotlibrc), a fixed size and resolution, and no `Software` text chunk (which names the
matplotlib version), so an export whose numbers did not change renders the same bytes and
`publish_pictures` leaves the files alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from podcastpile.dataset.destination import Destination

FOLDER = "images"
HOURS_BY_LANGUAGE = f"{FOLDER}/hours_by_language.png"
TURN_DURATIONS = f"{FOLDER}/turn_durations.png"
DNSMOS_OVRL = f"{FOLDER}/dnsmos_ovrl.png"
SPEAKERS = f"{FOLDER}/speakers_per_episode.png"
HOURS_KEPT = f"{FOLDER}/hours_kept_by_filter.png"
ALL = (HOURS_BY_LANGUAGE, TURN_DURATIONS, DNSMOS_OVRL, SPEAKERS, HOURS_KEPT)
_SIZE = (6.4, 3.6)  # inches
_DPI = 100
_COLOR, _LEFT_OUT = "#3b6ea5", "#c9c9c9"


def _edge_labels(edges: Sequence[float], unit: str = "") -> list[str]:
    labels = [f"{low:g}–{high:g}" for low, high in zip(edges, edges[1:])]
    return [*labels, f"≥{edges[-1]:g}{unit}"]


def _bars(axes: Any, labels: Sequence[str], values: Sequence[float], *, value_format: str) -> None:
    if value_format == ",d":  # counts: no ticks at fractions of a turn
        from matplotlib.ticker import MaxNLocator

        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    positions = list(range(len(labels)))
    bars = axes.bar(positions, values, color=_COLOR)
    axes.set_xticks(positions, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    axes.bar_label(bars, labels=[format(value, value_format) if value else "" for value in values], fontsize=7)
    axes.spines[["top", "right"]].set_visible(False)
    axes.margins(y=0.12)


def _render(draw: Any) -> bytes:
    import io

    import matplotlib.style
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        figure = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
        draw(figure.add_subplot())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _hours_by_language(figures: Mapping[str, Any]) -> bytes:
    hours = sorted(((seconds / 3600.0, name) for name, seconds in figures["seconds_by_language"].items()),
                   key=lambda item: (-item[0], item[1]))

    def draw(axes: Any) -> None:
        _bars(axes, [name for _, name in hours], [value for value, _ in hours], value_format=",.2f")
        axes.set_ylabel("hours of audio")
        axes.set_title(f"Hours by language ({figures['episodes']:,} episodes)")

    return _render(draw)


def _turn_durations(figures: Mapping[str, Any]) -> bytes:
    def draw(axes: Any) -> None:
        _bars(axes, _edge_labels(figures["turn_seconds_edges"], " s"), figures["turn_seconds_counts"],
              value_format=",d")
        axes.set_xlabel("turn duration (seconds)")
        axes.set_ylabel("turns")
        axes.set_title(f"Turn durations ({figures['turns']:,} turns, {figures['turn_seconds'] / 3600:,.2f} h)")

    return _render(draw)


def _dnsmos(figures: Mapping[str, Any]) -> bytes:
    def draw(axes: Any) -> None:
        _bars(axes, _edge_labels(figures["dnsmos_ovrl_edges"]), figures["dnsmos_ovrl_counts"], value_format=",d")
        axes.set_xlabel("DNSMOS P.835 OVRL")
        axes.set_ylabel("turns")
        scored = sum(figures["dnsmos_ovrl_counts"])
        axes.set_title(f"DNSMOS OVRL of the {scored:,} turns with a score "
                       f"({figures['turns_unscored']:,} without)")

    return _render(draw)


def _speaker_order(name: str) -> tuple[int, int]:
    return (1, 0) if not name.isdigit() else (0, int(name))


def _speakers(figures: Mapping[str, Any]) -> bytes:
    counts = sorted(figures["speakers"].items(), key=lambda item: _speaker_order(item[0]))

    def draw(axes: Any) -> None:
        _bars(axes, [name for name, _ in counts], [count for _, count in counts], value_format=",d")
        axes.set_xlabel("speakers in the episode (diarization)")
        axes.set_ylabel("episodes")
        axes.set_title("Speakers per episode")

    return _render(draw)


def _hours_kept(figures: Mapping[str, Any], kept: Mapping[str, Any]) -> bytes:
    left_seconds = kept["left_out"]["seconds_by_language"]
    kept_seconds = figures["seconds_by_language"]
    names = sorted(set(left_seconds) | set(kept_seconds),
                   key=lambda name: (-(kept_seconds.get(name, 0) + left_seconds.get(name, 0)), name))
    kept_hours = [kept_seconds.get(name, 0.0) / 3600 for name in names]
    left_hours = [left_seconds.get(name, 0.0) / 3600 for name in names]

    def draw(axes: Any) -> None:
        positions = list(range(len(names)))
        axes.bar(positions, kept_hours, color=_COLOR, label="kept")
        axes.bar(positions, left_hours, bottom=kept_hours, color=_LEFT_OUT, label="left out")
        axes.set_xticks(positions, names)
        axes.set_ylabel("hours of audio")
        axes.legend(frameon=False)
        axes.spines[["top", "right"]].set_visible(False)
        total = sum(kept_hours) + sum(left_hours)
        share = f" ({sum(kept_hours) / total:.0%})" if total else ""
        axes.set_title(f"Hours kept by the filter: {sum(kept_hours):,.2f} of {total:,.2f}{share}", fontsize=10)
        where = kept["where"] if len(kept["where"]) <= 90 else kept["where"][:87] + "…"
        axes.text(0.5, -0.12 if len(names) < 2 else -0.2, where, transform=axes.transAxes, ha="center",
                  va="top", fontsize=7, family="monospace")

    return _render(draw)


def render(figures: Mapping[str, Any], kept: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The card's pictures for the dataset `figures` (`stats.py`, added up) and, for a
    filtered release, `kept` ({"where", "left_out"}); path relative to the root → PNG bytes.

    A picture with nothing to show (no episodes, no scored turns) is left out.
    """
    pictures: dict[str, bytes] = {}
    if figures["episodes"]:
        pictures[HOURS_BY_LANGUAGE] = _hours_by_language(figures)
        pictures[SPEAKERS] = _speakers(figures)
    if figures["turns"]:
        pictures[TURN_DURATIONS] = _turn_durations(figures)
    if sum(figures["dnsmos_ovrl_counts"]):
        pictures[DNSMOS_OVRL] = _dnsmos(figures)
    if kept is not None:
        pictures[HOURS_KEPT] = _hours_kept(figures, kept)
    return pictures


def publish_pictures(destination: Destination, pictures: Mapping[str, bytes]) -> None:
    """Write each picture atomically unless the dataset already holds the same bytes (an
    unchanged picture is not uploaded again); delete the card's pictures no longer drawn."""
    for path, data in pictures.items():
        if destination.exists(path):
            with destination.filesystem.open_input_stream(destination.path(path)) as source:
                if source.read() == data:
                    continue
        destination.write_atomically(path, data)
    for path in ALL:
        if path not in pictures:
            destination.delete(path)
