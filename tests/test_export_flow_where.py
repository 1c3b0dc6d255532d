"""The export flow's filtered release (`where`, `out`), run through Prefect as the deployment runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from deployments.allowlist import ROOT, AllowedDeployment, Allowlist
from podcastpile.store import EpisodeStore, make_engine, migrate
from tests.dataset.conftest import add_completed

PREDICATE = "num_speakers = 2 and duration >= 0"


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EpisodeStore]:
    """Five completed episodes: three with one speaker, two with two; settings point at them."""
    url = f"sqlite:///{tmp_path / 'episodes.db'}"
    engine = make_engine(url)
    migrate(engine)
    store = EpisodeStore(engine, archive_required=False)
    add_completed(store, [f"https://example.com/one-{n}.mp3" for n in range(3)], turns=1)
    add_completed(store, [f"https://example.com/two-{n}.mp3" for n in range(2)], seed=40, turns=6)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "full"))
    yield store
    engine.dispose()


def test_the_flow_publishes_a_filtered_release_beside_the_full_dataset(
    prefect_harness: None, completed: EpisodeStore, tmp_path: Path
) -> None:
    from flows.export import export_flow

    full = export_flow()  # the hourly deployment: everything, into DATASET_DIR
    release_dir = tmp_path / "release"
    release = export_flow(out=str(release_dir), where=PREDICATE)

    assert full["episodes_written"] == 5 and full["where"] is None
    assert (release["episodes_written"], release["episodes_filtered"], release["where"]) == (2, 3, PREDICATE)
    manifest = json.loads((release_dir / "manifest.json").read_text())
    assert manifest["layout"]["where"] == PREDICATE and manifest["episodes"] == 2
    # The release holds exactly the full dataset's rows that pass the filter.
    episodes = pd.read_parquet(tmp_path / "full" / "data" / "episodes")
    expected = sorted(episodes[episodes["num_speakers"] == 2]["episode_id"])
    assert sorted(pd.read_parquet(release_dir / "data" / "episodes")["episode_id"]) == expected
    # Incremental as the full export is: the next scheduled run finds nothing new.
    assert export_flow(out=str(release_dir), where=PREDICATE)["episodes_written"] == 0


def test_a_filter_without_its_own_destination_fails_the_run_and_writes_nothing(
    prefect_harness: None, completed: EpisodeStore, tmp_path: Path
) -> None:
    from flows.export import export_flow

    state = export_flow(where=PREDICATE, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="filtered release"):
        state.result()
    assert not (tmp_path / "full").exists()


def test_a_bad_filter_fails_at_once_without_retries(
    prefect_harness: None, completed: EpisodeStore, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.export import export_flow
    from podcastpile.dataset.filters import FilterError

    state = export_flow(out=str(tmp_path / "bad"), where="pesq >= 3.0", return_state=True)
    assert state.is_failed()
    with pytest.raises(FilterError, match="no column 'pesq'"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [run.run_count for run in runs if run.name.startswith("export-dataset")] == [1]


def test_workers_accept_a_run_of_the_export_deployment_with_a_filter(tmp_path: Path) -> None:
    # A second deployment for a filtered release (prefect.yaml's commented `export-clean`) gives
    # these two parameters; the workers' allowlist refuses parameters the flow function does not
    # take, and an `out` that prefect.yaml does not give (a run may not choose where it writes).
    project = (ROOT / "prefect.yaml").read_text()
    clean = "\n".join(line.replace("  # ", "  ", 1) for line in project[project.index("  # - name: export-clean"):].splitlines())
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "export.py").write_text((ROOT / "flows" / "export.py").read_text())
    (tmp_path / "prefect.yaml").write_text("deployments:\n" + clean + "\n")
    allowlist = Allowlist.from_project(tmp_path)
    release = allowlist.deployments["export-clean"]
    deployment = {"name": "export-clean", "entrypoint": release.entrypoint, "job_variables": {},
                  "storage_document_id": None, "infrastructure_document_id": None, "pull_steps": None}
    given = {"out": "s3://bucket/podcastpile-clean", "where": PREDICATE}
    assert isinstance(allowlist.match(deployment, {}, given), AllowedDeployment)
    assert isinstance(allowlist.match(deployment, {}, {**given, "out": "s3://bucket/elsewhere"}), str)
    ours = Allowlist.from_project()  # the checkout's `export`: DATASET_DIR only
    export = {**deployment, "name": "export", "entrypoint": ours.deployments["export"].entrypoint}
    assert isinstance(ours.match(export, {}, {"where": PREDICATE}), AllowedDeployment)
    assert isinstance(ours.match(export, {}, given), str)
