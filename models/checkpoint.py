"""Model checkpoints: safetensors weights with typed configs as JSON, nothing pickled.

One file per checkpoint. The safetensors header's metadata (string to string) holds:

- ``format``: ``"mimcast-checkpoint"``;
- ``format_version``: :data:`FORMAT_VERSION`, bumped when the layout changes;
- ``model``: the registered model name (:data:`MODELS`, e.g. ``"MIMNet"``);
- ``config``: the model's config dataclass as JSON;
- ``inputs``: the :class:`InputConfig` as JSON (format 3): how dBZ fields become model inputs
  (normalisation range, Eulerian or Lagrangian frame, default post-processing), so a
  checkpoint alone turns dBZ into dBZ;
- ``extra``: optional JSON object (training step, scores, data provenance).

Loading reads the header first, rebuilds the configs (unknown or missing keys fail with a
message naming them), then loads the tensors with ``safetensors`` (no ``pickle``, no
``torch.load``) into a freshly built model, strictly. Format 2 files (no ``inputs``) are still
read: their normalisation comes from ``extra`` (``dbz_min``/``dbz_max``, written by every
mimcast trainer), never from a silent default. Config fields added since a file's format
(:data:`_ADDED_FIELDS`) take the value that reproduces its model (format 3: ``step_input =
False``). Writes are atomic (``pipeline.atomic``).

A new model is its model file plus one :func:`register_model` call.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mimcast.models.mimnet import MIMNet, MIMNetConfig
from mimcast.pipeline.atomic import atomic_path
from mimcast.pipeline.defaults import FRAMES, POSTPROCESS

FORMAT = "mimcast-checkpoint"
# 4: MIMNetConfig.step_input; 3: typed InputConfig; 2: per-pixel channel norm replaced GroupNorm
FORMAT_VERSION = "4"
READABLE_VERSIONS = ("2", "3", "4")

#: Model name -> (module class, config dataclass). The class takes the config as its argument.
MODELS: dict[str, tuple[type[nn.Module], type]] = {"MIMNet": (MIMNet, MIMNetConfig)}

#: Config fields by the format version that added them, with the value that reproduces the
#: older model: a checkpoint of an earlier version is read with them.
_ADDED_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "MIMNet": {"3": {"residual": False}, "4": {"step_input": False}}
}


def register_model(name: str, cls: type[nn.Module], config_cls: type) -> None:
    """Make checkpoints holding ``name`` loadable (``cls(config_cls(**json))``)."""
    MODELS[name] = (cls, config_cls)


@dataclass(frozen=True)
class InputConfig:
    """How dBZ fields become model inputs and outputs become dBZ; part of every checkpoint."""

    dbz_min: float  # dBZ mapped to 0 (weaker echoes and "no echo" clip to it)
    dbz_max: float  # dBZ mapped to 1 (stronger echoes clip to it)
    frame: str = "eulerian"  # one of FRAMES; "lagrangian": inputs moved with the motion field
    motion_frames: int = 3  # last input frames for the Lucas-Kanade motion (lagrangian)
    postprocess: str = "none"  # default output post-processing, one of POSTPROCESS (defaults)
    pixel_m: float | None = None  # the training grids' spacing (metres; None: unknown)

    def __post_init__(self) -> None:
        if not self.dbz_max > self.dbz_min:
            raise ValueError(f"InputConfig: dbz_max {self.dbz_max} must exceed {self.dbz_min}")
        if self.frame not in FRAMES:
            raise ValueError(f"InputConfig.frame={self.frame!r}: one of {', '.join(FRAMES)}")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"InputConfig.postprocess={self.postprocess!r}: one of "
                             f"{', '.join(POSTPROCESS)}")  # fmt: skip
        if self.motion_frames < 2:
            raise ValueError(f"InputConfig.motion_frames={self.motion_frames}: must be >= 2")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its input config and extra metadata."""

    path: Path
    name: str  # registered model name
    model: nn.Module
    inputs: InputConfig
    extra: dict[str, Any]
    format_version: str


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or does not match this code's models."""


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    inputs: InputConfig,
) -> Path:
    """Write ``model``'s weights, config and ``inputs`` to ``path`` atomically; return the path."""
    name = next((n for n, (cls, _) in MODELS.items() if type(model) is cls), None)
    if name is None:
        raise CheckpointError(f"{type(model).__name__} is not a registered model (register_model)")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
        "inputs": json.dumps(dataclasses.asdict(inputs), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; share like other files
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _typed(path: Path, cls: type, raw: dict[str, Any], what: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    unknown = sorted(set(raw) - fields)
    missing = sorted((required if what == "inputs" else fields) - set(raw))
    if unknown or missing:
        raise CheckpointError(
            f"{path}: {what} does not match this code's {cls.__name__} "
            f"(unknown keys: {unknown or 'none'}; missing keys: {missing or 'none'}); "
            "it was written by another mimcast version"
        )
    try:
        return cls(**raw)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid {what}: {err}") from err


def read_header(path: str | Path) -> tuple[str, Any, InputConfig, dict[str, Any], str]:
    """Return ``(model name, model config, input config, extra, format version)``, no weights."""
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
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this code reads "
            f"{', '.join(READABLE_VERSIONS)}; use the mimcast release that wrote it"
        )
    name = meta.get("model")
    if name not in MODELS:
        raise CheckpointError(
            f"{path}: holds a {name!r}, this code knows {', '.join(sorted(MODELS))}"
        )
    try:
        raw = json.loads(meta["config"])
        extra = json.loads(meta.get("extra", "{}"))
        raw_inputs = json.loads(meta["inputs"]) if version != "2" else None
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: config metadata missing or not JSON ({err})") from err
    for since, added in _ADDED_FIELDS.get(name, {}).items():
        if int(version) < int(since):
            raw = {**added, **raw}
    if version == "2":
        if "dbz_min" not in extra or "dbz_max" not in extra:
            raise CheckpointError(
                f"{path}: format 2 checkpoint without dbz_min/dbz_max in its metadata: its input "
                "normalisation is unknown; retrain it with this mimcast"
            )
        raw_inputs = {"dbz_min": extra["dbz_min"], "dbz_max": extra["dbz_max"]}
    config = _typed(path, MODELS[name][1], raw, "config")
    inputs = _typed(path, InputConfig, raw_inputs, "inputs")
    return name, config, inputs, extra, version


def read_metadata(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Return the model config and the ``extra`` metadata of a checkpoint without weights."""
    _, config, _, extra, _ = read_header(path)
    return config, extra


def open_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model from the file alone; return it (eval mode) with its metadata."""
    path = Path(path)
    name, config, inputs, extra, version = read_header(path)
    model = MODELS[name][0](config)
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
            f"{path}: weights do not match {name}({config}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return Checkpoint(path, name, model.to(device).eval(), inputs, extra, version)


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Return the model (eval mode) and the extra metadata; see :func:`open_checkpoint`."""
    ckpt = open_checkpoint(path, device)
    return ckpt.model, ckpt.extra
