"""MIMNet checkpoints: safetensors weights with the config as JSON, nothing pickled.

One file per checkpoint. The safetensors header's metadata (string to string) holds:

- ``format``: ``"mimcast-checkpoint"``;
- ``format_version``: :data:`FORMAT_VERSION`, bumped when the layout changes;
- ``model``: ``"MIMNet"``;
- ``config``: the :class:`~models.mimnet.MIMNetConfig` as JSON;
- ``extra``: optional JSON object (training step, scores, data provenance).

Loading reads the header first, rebuilds the config (unknown or missing keys fail with a
message naming them), then loads the tensors with ``safetensors`` (no ``pickle``, no
``torch.load``) into a freshly built model, strictly. Writes are atomic: a temporary file in
the same directory, then a rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.mimnet import MIMNet, MIMNetConfig

FORMAT = "mimcast-checkpoint"
FORMAT_VERSION = "2"  # 2: per-pixel channel norm replaced GroupNorm


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or does not match this code's model."""


def save_checkpoint(model: MIMNet, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": type(model).__name__,
        "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; share like other files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_metadata(path: str | Path) -> tuple[MIMNetConfig, dict[str, Any]]:
    """Return the config and the ``extra`` metadata of a checkpoint without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mimcast checkpoint (no format={FORMAT!r} header)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION!r}; use the mimcast release that wrote it"
        )
    if meta.get("model") != "MIMNet":
        raise CheckpointError(f"{path}: holds a {meta.get('model')!r}, expected 'MIMNet'")
    try:
        raw = json.loads(meta["config"])
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: config metadata missing or not JSON ({err})") from err
    fields = {f.name for f in dataclasses.fields(MIMNetConfig)}
    unknown, missing = sorted(set(raw) - fields), sorted(fields - set(raw))
    if unknown or missing:
        raise CheckpointError(
            f"{path}: config does not match this code's MIMNetConfig "
            f"(unknown keys: {unknown or 'none'}; missing keys: {missing or 'none'}); "
            "it was written by another mimcast version"
        )
    try:
        config = MIMNetConfig(**raw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid config: {err}") from err
    return config, extra


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[MIMNet, dict[str, Any]]:
    """Rebuild the model from the file alone; return it (eval mode) and the extra metadata."""
    config, extra = read_metadata(path)
    model = MIMNet(config)
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: weights unreadable ({err})") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not match MIMNet({config}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), extra
