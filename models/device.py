"""Device names: the one place that turns ``auto``/``cpu``/``cuda``/``cuda:N`` into a device.

Importing this module does not import torch (the CLI checks names with it at start-up);
only resolving a CUDA name against the machine does.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """Return ``name`` normalised if it names a device (not checked against this machine)."""
    name = str(name).strip().lower()
    if not _PATTERN.match(name):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return name


def local_rank() -> int:
    """This process's GPU index on its node under torchrun (``LOCAL_RANK``); 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """How many processes torchrun started on this node (``LOCAL_WORLD_SIZE``); 1 otherwise."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def ddp_backend(device_type: str, local_world: int, gpus: int) -> str:
    """The process-group backend for DDP on ``device_type`` (``cpu`` or ``cuda``).

    NCCL where each process on the node has a GPU of its own. NCCL refuses two ranks on one
    GPU, so where torchrun starts more processes than the node has GPUs they share them
    round-robin over gloo, which reduces CUDA tensors too (slower, but it runs). CPU: gloo.
    """
    if device_type == "cuda" and 0 < local_world <= gpus:
        return "nccl"
    return "gloo"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Return the ``torch.device`` for ``name``, checked against this machine.

    ``auto`` is ``cuda:<local_rank>`` when CUDA is present, else ``cpu``; a plain ``cuda`` is
    the same GPU. With more local ranks than GPUs, ranks share them: ``local_rank`` modulo the
    number of GPUs (see :func:`ddp_backend`).

    Raises
    ------
    ValueError
        For a name that is not a device, or a CUDA device this machine does not have.
    """
    import torch

    name = check_device_name(name)
    if name in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    if name == "auto":
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: this machine has no CUDA GPU (use cpu or auto)")
        if (device.index or 0) >= count:
            raise ValueError(
                f"device {name!r}: this machine has {count} CUDA device(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    return device


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` has fast bf16 kernels, so that bf16 autocast pays.

    CUDA: the GPU supports bf16 (Ampere and later). CPU: oneDNN has bf16 kernels for it
    (AVX512-BF16, AMX; also AVX512 cores, which it emulates fast). On an AVX2-only CPU,
    bf16 convolutions fall back to a reference kernel 15-80x slower than fp32 (measured on
    a 2-core AMD EPYC: a MIMNet train step took 43 s in bf16, 3.8 s in fp32).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return False


def inference_bf16(setting: bool | None, device: torch.device | str) -> bool:
    """Whether inference on ``device`` runs under bf16 autocast.

    ``setting`` decides when given, then ``MIMCAST_BF16`` (``1`` or ``0``, for a whole site or
    a reproducible run). By default: on a CPU with native bf16 kernels, where
    the shipped model's network ran 1.3-1.8x faster (700² and 256², 2-core Intel Xeon) with
    the same held-out scores (RMI and YW: CSI within 0.002, MSE within 0.1 dBZ²); fp32 on
    CUDA, where it was no faster on an H200 (and slower on tiled 2048² grids), and on CPUs
    without native bf16.
    """
    import torch

    if setting is not None:
        return bool(setting)
    site = os.environ.get("MIMCAST_BF16", "").strip()
    if site in ("0", "1"):
        return site == "1"
    if site:
        raise ValueError(f"MIMCAST_BF16={site!r}: 1 (bf16) or 0 (fp32)")
    device = torch.device(device)
    return device.type == "cpu" and bf16_native(device)
