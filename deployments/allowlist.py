"""Which flow runs a Podcast Pile worker agrees to run: the deployments of its own checkout.

A Prefect worker, left to itself, runs whatever a deployment on its pool says: pull steps
(`run_shell_script`), a command from job variables, code from a storage block. Whoever can
create a deployment (anyone who reaches an open API, anyone holding the worker password) could
then run code on every worker. The original system's password let a worker fetch jobs and post
results, nothing more; this allowlist brings that back.

The worker's own code is its checkout or, on a machine without one, the installed package
(`pip install podcastpile[worker]`), whose wheel carries prefect.yaml as deployments/prefect.yaml.
A run is allowed when its deployment is one of those in the worker's own `prefect.yaml`: same
name, same entrypoint, no job variables beyond those the file gives (none today, on the
deployment or on the run), no storage block, pull steps of the one kind `prefect deploy`
records for this project (`set_working_directory`: the worker never runs them, it runs its own
checkout), and parameters the flow's function takes. The worker then runs the entrypoint from
its checkout with a configuration it builds itself (deployments/worker.py), so nothing the
server holds decides which code runs.

Parameter values are the flow's to check (types, a URL, a filter), except those a flow module
names in `FIXED_PARAMETERS`: values that decide where the worker writes (the export's `out`) or
which deployment it drives (dispatch's `deployment`). Whoever holds the API may not choose
those: a run's value must be the one prefect.yaml gives that deployment (`parameters:`), or
absent (the flow's default, e.g. DATASET_DIR), else the run is refused.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages for an installed wheel
# The Prefect worker type that applies this allowlist (deployments/worker.py); named here so the
# CLI can name it without importing Prefect.
WORKER_TYPE = "podcastpile"
# What ast.literal_eval raises for source that is not a plain literal (`{[1]: 2}` is a TypeError).
LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, RecursionError)
# The only pull step `prefect deploy` records for a prefect.yaml with `pull: null`.
WORKING_DIRECTORY_STEP = "prefect.deployments.steps.set_working_directory"


def project_file(root: Path = ROOT) -> Path:
    """`root`'s prefect.yaml: at the top of a checkout; in an installed package, the copy the
    wheel carries as deployments/prefect.yaml (in a checkout, a link to the top one)."""
    for path in (root / "prefect.yaml", root / "deployments" / "prefect.yaml"):
        if path.is_file():
            return path
    return root / "prefect.yaml"  # neither: the error names the file a checkout would have


def is_checkout(root: Path = ROOT) -> bool:
    """Whether the code runs from a checkout (prefect.yaml at its top) rather than an installed
    package (site-packages, where the top holds every other distribution too)."""
    return (root / "prefect.yaml").is_file()


class AllowlistError(ValueError):
    """The checkout's prefect.yaml cannot be read as a list of deployments."""


@dataclass(frozen=True)
class AllowedDeployment:
    """One deployment of prefect.yaml, as a worker compares a run's deployment to it."""

    name: str
    entrypoint: str  # relative to the checkout, `flows/process.py:process_batch`
    job_variables: Mapping[str, Any] = field(default_factory=dict)
    parameters: frozenset[str] = frozenset()  # the flow function's parameter names
    # The flow module's FIXED_PARAMETERS and the values a run may give each (fixed_parameters).
    fixed: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def local_entrypoint(self, root: Path = ROOT) -> str:
        """The entrypoint as an absolute path in `root`, for `PREFECT__FLOW_ENTRYPOINT`."""
        path, _, function = self.entrypoint.rpartition(":")
        return f"{root / path}:{function}"


@dataclass(frozen=True)
class Allowlist:
    """The deployments of one checkout's prefect.yaml, by name."""

    deployments: Mapping[str, AllowedDeployment]
    pull_steps: list[dict[str, Any]] | None = None  # prefect.yaml's `pull`, None when absent

    @classmethod
    def from_project(cls, root: Path = ROOT) -> Allowlist:
        """Read `root`'s prefect.yaml (`project_file`) and the signature of each deployment's
        flow function."""
        path = project_file(root)
        try:
            project = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise AllowlistError(f"cannot read {path}: {error}") from error
        if not isinstance(project, dict) or not isinstance(project.get("deployments"), list):
            raise AllowlistError(f"{path} lists no deployments")
        allowed: dict[str, AllowedDeployment] = {}
        for entry in project["deployments"]:
            name, entrypoint = entry.get("name"), entry.get("entrypoint")
            if not isinstance(name, str) or not isinstance(entrypoint, str) or ":" not in entrypoint:
                raise AllowlistError(f"{path}: a deployment without a name or an entrypoint: {entry!r}")
            given = entry.get("parameters") or {}
            if not isinstance(given, dict):
                raise AllowlistError(f"{path}: the parameters of deployment {name!r} are not a mapping")
            allowed[name] = AllowedDeployment(
                name=name, entrypoint=entrypoint, job_variables=dict(entry.get("job_variables") or {}),
                parameters=flow_parameters(root, entrypoint), fixed=fixed_parameters(root, entrypoint, given),
            )
        return cls(deployments=allowed, pull_steps=project.get("pull"))

    def match(self, deployment: Mapping[str, Any] | None, run_job_variables: Mapping[str, Any] | None,
              parameters: Mapping[str, Any] | None) -> AllowedDeployment | str:
        """The allowed deployment a run belongs to, or why it is refused (one sentence).

        `deployment` is the run's deployment as the API returns it (None for a run without
        one); `run_job_variables` and `parameters` are the run's own.
        """
        if deployment is None:
            return "a flow run without a deployment"
        name = str(deployment.get("name"))
        allowed = self.deployments.get(name)
        if allowed is None:
            return f"deployment {name!r} is not in this worker's prefect.yaml"
        if deployment.get("entrypoint") != allowed.entrypoint:
            return (f"deployment {name!r} runs {deployment.get('entrypoint')!r}, "
                    f"not {allowed.entrypoint!r} as this worker's prefect.yaml says")
        if (deployment.get("job_variables") or {}) != dict(allowed.job_variables):
            return f"deployment {name!r} sets job variables {_keys(deployment.get('job_variables'))} that prefect.yaml does not"
        if run_job_variables:
            return f"the run overrides job variables {_keys(run_job_variables)}"
        if deployment.get("storage_document_id") or deployment.get("infrastructure_document_id"):
            return f"deployment {name!r} names a storage or infrastructure block"
        refused_step = self._refused_pull_step(deployment.get("pull_steps"))
        if refused_step is not None:
            return f"deployment {name!r} has a pull step this worker does not run: {refused_step}"
        unknown = sorted(set(parameters or {}) - allowed.parameters)
        if unknown:
            return f"parameters {', '.join(map(repr, unknown))} are not parameters of {allowed.entrypoint}"
        for key, accepted in sorted(allowed.fixed.items()):
            value = (parameters or {}).get(key)  # absent and None alike: the flow's default
            if value not in accepted:
                return (f"parameter {key!r} of deployment {name!r} is {_short(value)}, but only this worker's "
                        f"prefect.yaml sets it ({_short(accepted[0])}): a run may not choose where the worker "
                        "writes or what it drives")
        return allowed

    def _refused_pull_step(self, steps: Any) -> str | None:
        """The first pull step that is not what `prefect deploy` records for prefect.yaml."""
        if self.pull_steps is not None:
            return None if steps == self.pull_steps else _step_name(steps)
        for step in steps or []:
            if not isinstance(step, dict) or list(step) != [WORKING_DIRECTORY_STEP]:
                return _step_name([step])
        return None


def flow_parameters(root: Path, entrypoint: str) -> frozenset[str]:
    """The parameter names of the function an entrypoint names, read from its source (no import:
    a GPU flow's module imports torch, and the worker checks runs in milliseconds)."""
    arguments = _flow_function(root, entrypoint)[1].args
    return frozenset(a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs])


def fixed_parameters(root: Path, entrypoint: str, given: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The values a run may give each of the flow module's `FIXED_PARAMETERS` (a literal tuple of
    names): prefect.yaml's value (`given`) where it sets one, else none or the function's
    default (a literal), which mean the same. Read from the source, like `flow_parameters`."""
    tree, function = _flow_function(root, entrypoint)
    names: Any = ()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == "FIXED_PARAMETERS" for target in targets):
            try:
                names = ast.literal_eval(node.value)  # type: ignore[union-attr, arg-type]
            except LITERAL_ERRORS as error:
                raise AllowlistError(f"{entrypoint}: FIXED_PARAMETERS is not a literal: {error}") from error
    if not isinstance(names, tuple) or not all(isinstance(name, str) for name in names):
        raise AllowlistError(f"{entrypoint}: FIXED_PARAMETERS must be a tuple of parameter names")
    defaults, taken = _literal_defaults(function.args, _module_constants(tree)), flow_parameters(root, entrypoint)
    return {name: (given[name],) if given.get(name) is not None else (None, defaults.get(name))
            for name in names if name in taken}


def _flow_function(root: Path, entrypoint: str) -> tuple[ast.Module, ast.FunctionDef | ast.AsyncFunctionDef]:
    path, _, function = entrypoint.rpartition(":")
    try:
        tree = ast.parse((root / path).read_text(), filename=str(root / path))
    except (OSError, SyntaxError) as error:
        raise AllowlistError(f"cannot read the flow {entrypoint}: {error}") from error
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return tree, node
    raise AllowlistError(f"{path} defines no function {function!r}")


def _literal_defaults(arguments: ast.arguments, constants: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of a function's parameters that are literals or the module's literal
    constants (`deployment: str = BATCH_DEPLOYMENT`); any other is left out."""
    positional = [*arguments.posonlyargs, *arguments.args]
    pairs = [*zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults),
             *((a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None)]
    found = {}
    for argument, default in pairs:
        if isinstance(default, ast.Name) and default.id in constants:
            found[argument.arg] = constants[default.id]
            continue
        try:
            found[argument.arg] = ast.literal_eval(default)
        except LITERAL_ERRORS:
            continue
    return found


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """The module's `NAME = literal` lines."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except LITERAL_ERRORS:
                continue
    return found


def _short(value: Any) -> str:
    return "unset: the flow's default" if value is None else repr(value)[:120]


def _keys(variables: Any) -> str:
    return ", ".join(sorted(map(str, variables))) if isinstance(variables, Mapping) else repr(variables)


def _step_name(steps: Any) -> str:
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        return ", ".join(map(str, steps[0]))
    return repr(steps)[:120]
