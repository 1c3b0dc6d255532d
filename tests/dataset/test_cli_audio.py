"""`ppcli export --audio/--audio-pad/--where` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from podcastpile.store import EpisodeStore, make_engine, migrate
from tests.dataset.archived import add_archived
from tests.dataset.test_cli_and_flow import ppcli
from tests.wayback import WaybackDouble


def test_ppcli_export_audio_and_where(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'episodes.db'}"
    engine = make_engine(url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    with WaybackDouble() as ia:
        made = add_archived(store, ia, ["solo", "duo"], turns=2)
        monkeypatch.setenv("WAYBACK_URL", ia.base_url)  # the archive's host is trusted, as in a deployment
        out = tmp_path / "with-audio"
        result = ppcli("export", "--out", str(out), "--audio", "flac", "--audio-pad", "0.1", "--json",
                       database_url=url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["episodes_written"] == 2 and summary["audio"] == "flac" and summary["skipped"] == []
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["layout"] == {"audio": "flac", "audio_pad": 0.1, "where": None}
        turns = pq.read_table(out / manifest["configs"]["turns"]["files"][0])
        assert turns.num_rows == 4 and all(row["bytes"] for row in turns.column("audio").to_pylist())

        again = ppcli("export", "--out", str(out), "--audio", "flac", "--audio-pad", "0.1",
                      database_url=url, cwd=tmp_path)
        assert again.returncode == 0 and "nothing new to export" in again.stdout

        mixed = ppcli("export", "--out", str(out), database_url=url, cwd=tmp_path)
        assert mixed.returncode == 1 and "--audio flac --audio-pad 0.1" in mixed.stderr

    bad = ppcli("export", "--audio", "mp3", database_url=url, cwd=tmp_path)
    assert bad.returncode == 2 and "use none, flac, opus" in bad.stderr
    unplaced = ppcli("export", "--where", "duration > 0", database_url=url, cwd=tmp_path)
    assert unplaced.returncode == 2 and "--out" in unplaced.stderr
    unknown = ppcli("export", "--where", "pesq >= 3.0", "--out", str(tmp_path / "r"),
                    database_url=url, cwd=tmp_path)
    assert unknown.returncode == 1 and "no column 'pesq'" in unknown.stderr
    release = ppcli("export", "--where", f"episode_id = '{made['duo'].url_hash}'", "--out", str(tmp_path / "r"),
                    database_url=url, cwd=tmp_path)
    assert release.returncode == 0, release.stderr
    assert "1 episodes" in release.stdout and "1 episode(s) left out by --where" in release.stdout
    engine.dispose()
