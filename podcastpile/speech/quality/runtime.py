"""Shared plumbing for the quality models: one onnxruntime session per model and process.

Sessions run single-threaded (intra- and inter-op) so a pool of N workers uses N cores and
the quality work cannot crowd out the GPU stages' CPU threads. onnxruntime releases the GIL
in `run`, so threads of one process share a session without copies of the weights.
"""

from __future__ import annotations

import hashlib
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

_sessions: dict[Path, Any] = {}
_lock = threading.Lock()


def package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed wheel (the models are data files of their packages)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed (pip install 'podcastpile[worker]')")
    return Path(spec.origin).parent.joinpath(*parts)


def package_version(distribution: str) -> str:
    """The installed version of a distribution, for provenance."""
    return metadata.version(distribution)


def file_digest(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256: which weights exactly, beside the version."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def session(path: Path) -> Any:
    """The process's onnxruntime session for `path`, created on first use (CPU, one thread)."""
    with _lock:
        found = _sessions.get(path)
        if found is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            found = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            _sessions[path] = found
        return found
