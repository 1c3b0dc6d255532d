"""What a worker knows about the machine it runs on: its GPUs, their names, its address.

Claims record the GPU name and the worker's address, so results (and failures) can be traced
to the hardware that made them; `ppcli worker --all-gpus` starts one worker per GPU listed
here. torch is imported only when CUDA is actually asked about: this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
from functools import cache

# `GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)`, one line per GPU, from `nvidia-smi -L`.
_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):")


def list_gpus() -> list[int]:
    """Indexes of the GPUs this machine has (as CUDA_VISIBLE_DEVICES counts them), maybe none.

    `nvidia-smi -L` when it is installed (it answers in milliseconds and needs no CUDA in
    Python); otherwise torch, when it is installed (its import takes seconds, once).
    """
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""  # driver not loaded, no devices: nvidia-smi fails
        return [int(match.group(1)) for line in listing.splitlines()
                if (match := _NVIDIA_SMI_LINE.match(line.strip()))]
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@cache
def gpu_name(device: str) -> str:
    """The name of the GPU a process computes on (`NVIDIA H100 80GB HBM3`), or `cpu`.

    `device` is the DEVICE setting: `cpu` never touches torch; `auto` means CUDA when torch
    sees a GPU; `cuda`/`cuda:N` name one.
    """
    if device == "cpu":
        return "cpu"
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else torch.cuda.current_device()
    return str(torch.cuda.get_device_name(index))


@cache
def local_address() -> str:
    """This machine's address as its own resolver knows it (hostname lookup), else 127.0.0.1.

    Recorded with claims where the database cannot see the claimer's address: SQLite (one
    machine) and PostgreSQL over a Unix socket (also the same machine).
    """
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
