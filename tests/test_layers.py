"""The layering is checked, not hoped for: CLI > deployments > flows > tasks > core.

The contracts live in pyproject.toml ([tool.importlinter]); these tests run them, keep their
list of core modules complete, show that they fail when someone breaks them, and forbid import
cycles of any kind (a module importing the package that contains it included).
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

import podcastpile

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("podcastpile", "flows", "tasks", "deployments")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the packages as they are in `tree` (its pyproject.toml's contracts)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of the editable install's finder
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True,
                           text=True, timeout=300, check=False)


def copy_of_the_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contracts_are_kept() -> None:
    checked = lint(ROOT)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "3 kept, 0 broken" in checked.stdout


def test_the_core_contract_names_every_core_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (core,) = [c for c in config["contracts"] if c["id"] == "core"]
    modules = {f"podcastpile.{m.name}" for m in pkgutil.iter_modules(podcastpile.__path__)} - {"podcastpile.cli"}
    assert set(core["source_modules"]) == modules


def test_prefect_imported_by_the_core_breaks_the_build(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    assert lint(tree).returncode == 0  # the copy alone passes: what follows is the added import
    levels = tree / "podcastpile" / "speech" / "levels.py"
    levels.write_text(levels.read_text() + "\nimport prefect  # noqa\n")
    checked = lint(tree)
    assert checked.returncode != 0
    assert "podcastpile.speech.levels -> prefect" in checked.stdout


def test_a_cycle_between_core_packages_breaks_the_build(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    urls = tree / "podcastpile" / "net" / "urls.py"
    urls.write_text(urls.read_text() + "\nimport podcastpile.speech.levels  # noqa\n")
    levels = tree / "podcastpile" / "speech" / "levels.py"
    levels.write_text(levels.read_text() + "\nimport podcastpile.net.urls  # noqa\n")
    checked = lint(tree)
    assert checked.returncode != 0 and "No cycles are allowed in podcastpile." in checked.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_is_part_of_an_import_cycle() -> None:
    # Stricter than the sibling contract: also a module that imports its own package's
    # __init__ while that __init__ imports it back (how `app` used to reach the commands).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    assert import_cycles(graph) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_500_lines(package: str) -> None:
    # Generated migrations aside: a module this long holds more than one concept.
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts}
    assert {path: lines for path, lines in sizes.items() if lines > 500} == {}
