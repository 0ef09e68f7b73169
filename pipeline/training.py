"""Training jobs: run configurations and the training entry point (no Prefect here).

The plain application layer that ``mimcast train`` and the Prefect ``train`` flow both
call: read a run configuration, build the datasets from cubes, and call the training loop.
A run configuration is one TOML file with three tables, each checked against its dataclass
(unknown keys are rejected with their name)::

    [model]   # models.mimnet.MIMNetConfig
    [data]    # pipeline.sequences.SequenceConfig
    [train]   # models.train.TrainConfig

The model's ``input_length``/``output_length`` are taken from ``[data]`` when ``[model]`` does
not set them, and must agree when both do.

A frame may change model keys for its own models: ``[eulerian.model]`` (or
``[lagrangian.model]``) applies when the run's ``[data] frame`` is that frame, and when
``mimcast loao`` trains that variant from the same file (:meth:`RunConfig.in_frame`).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimcast.models.mimnet import MIMNetConfig
from mimcast.models.train import TrainConfig, TrainResult
from mimcast.pipeline.config import ConfigError, from_mapping, read_toml, to_dict
from mimcast.pipeline.defaults import DEFAULT_TRAIN_CONFIG, FRAMES
from mimcast.pipeline.sequences import SequenceConfig


@dataclass(frozen=True)
class RunConfig:
    """Model, data and training configuration of one run."""

    model: MIMNetConfig
    data: SequenceConfig
    train: TrainConfig
    #: model keys of each frame's own table (``[eulerian.model]``), applied by in_frame
    frame_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the file's [model] before any frame's keys (None: ``model``)
    shared_model: MIMNetConfig | None = None

    def in_frame(self, frame: str) -> RunConfig:
        """This configuration for a model in ``frame``: ``[data] frame`` set, and the
        frame's own model keys applied over the shared ``[model]``."""
        base = self.shared_model or self.model
        keys = self.frame_model.get(frame, {})
        model = from_mapping(MIMNetConfig, {**to_dict(base), **keys}, where=f"[{frame}.model]")
        data = dataclasses.replace(self.data, frame=frame)
        return dataclasses.replace(self, model=model, data=data, shared_model=base)

    def to_dict(self) -> dict[str, Any]:
        """Return plain data (for JSON/TOML and checkpoint metadata)."""
        return {
            "model": to_dict(self.model),
            "data": to_dict(self.data),
            "train": to_dict(self.train),
        }


def _read_run_doc(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A run configuration's tables; ``base = "other.toml"`` (beside it) supplies every key it
    does not set itself, table by table (a second stage of a recipe changes only [train])."""
    doc = read_toml(path, missing=f" (the base of {seen[-1]})" if seen else "")
    base = doc.pop("base", None)
    if base is None:
        return doc
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base = {base!r}: the path of another run configuration")
    parent = path.parent / base
    if parent.resolve() in {p.resolve() for p in (*seen, path)}:
        raise ConfigError(f"{path}: base = {base!r} leads back to {parent}")
    return _merge(_read_run_doc(parent, (*seen, path)), doc)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_run_config(path: str | Path | None = None, **train_overrides: Any) -> RunConfig:
    """Read a run configuration (default: ``data/train.toml``); overrides go to ``[train]``."""
    path = Path(path) if path else DEFAULT_TRAIN_CONFIG
    doc = _read_run_doc(path)
    unknown = sorted(set(doc) - {"model", "data", "train", *FRAMES})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {unknown}; known: [model], [data], [train], "
                          f"and [<frame>.model] for a frame of {', '.join(FRAMES)}")  # fmt: skip
    frame_model: dict[str, dict[str, Any]] = {}
    for frame in FRAMES:
        table = doc.get(frame, {})
        if not isinstance(table, Mapping) or set(table) - {"model"}:
            raise ConfigError(f"{path}: [{frame}] may only hold a [{frame}.model] table")
        fixed = sorted(set(table.get("model", {})) & {"input_length", "output_length"})
        if fixed:
            raise ConfigError(f"{path}: [{frame}.model] {', '.join(fixed)}: set in [data]")
        frame_model[frame] = dict(table.get("model", {}))
    data = from_mapping(SequenceConfig, doc.get("data", {}), where=f"{path} [data]")
    model_doc = dict(doc.get("model", {}))
    for key, value in (("input_length", data.input_length), ("output_length", data.output_length)):
        if model_doc.setdefault(key, value) != value:
            raise ConfigError(
                f"{path}: [model] {key}={model_doc[key]} disagrees with [data] {key}={value}"
            )
    model = from_mapping(MIMNetConfig, model_doc, where=f"{path} [model]")
    train_doc = dict(doc.get("train", {}))
    given = {k: v for k, v in train_overrides.items() if v is not None}
    train_doc.update(given)
    where = f"{path} [train]" + (f" (overridden: {', '.join(sorted(given))})" if given else "")
    train = from_mapping(TrainConfig, train_doc, where=where)
    config = RunConfig(model, data, train, frame_model)
    for frame in FRAMES:  # a mistake in any frame's table fails now, naming the file
        try:
            config.in_frame(frame)
        except ConfigError as err:
            raise ConfigError(f"{path} {err}") from err
    return config.in_frame(data.frame)


def run_training(
    cubes: list[str | Path],
    out_dir: str | Path,
    config: RunConfig,
    *,
    progress: bool = True,
    deadline_s: float | None = None,
) -> TrainResult:
    """Train MIMNet on ``cubes`` with ``config``; resume when ``out_dir`` holds a state.

    With ``[data] frame = "lagrangian"`` (or augmentation, or ``min_targets``) the windows are
    first cut into a pack (``out_dir/pack.npz``, reused on resume) and trained from it.
    ``deadline_s``: stop training that long after it started, checkpointed so that the same
    call goes on (:func:`mimcast.models.train.train`).
    """
    for cube in cubes:
        if not Path(cube).exists():
            raise FileNotFoundError(f"{cube}: no such cube (run 'mimcast ingest' first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.data.uses_pack or config.model.step_input:  # a pack knows each window's step
        from mimcast.pipeline.packs import build_pack

        pack = out / "pack.npz"
        if not pack.exists():
            build_pack(cubes, pack, config.data.pack_config(), progress=progress)
        return train_from_pack(pack, out, config, progress=progress, deadline_s=deadline_s)
    from mimcast.pipeline.sequences import RadarSequenceDataset

    train_set = RadarSequenceDataset(cubes, config.data, "train")
    val_set = RadarSequenceDataset(cubes, config.data, "val")
    _check_sizes(train_set, val_set, [str(c) for c in cubes], config)
    from mimcast.pipeline.cube import open_cube, pixel_metres

    pixels = [pixel_metres(open_cube(c, quiet=True)) for c in cubes]
    return _train(train_set, val_set, [str(c) for c in cubes], out, config, progress, deadline_s,
                  pixels)  # fmt: skip


def train_from_pack(
    pack: str | Path,
    out_dir: str | Path,
    config: RunConfig,
    *,
    cubes: list[int] | None = None,
    progress: bool = True,
    device: str | None = None,
    deadline_s: float | None = None,
) -> TrainResult:
    """Train from a pack (``pipeline.packs``), optionally on a subset of its cubes.

    On a GPU the windows are prepared once on the device (``PackDataset(device=...)``): the
    one this process trains on, so that under torchrun each rank keeps its pack on its own GPU.
    """
    from mimcast.models.train import train_device
    from mimcast.pipeline.packs import PackDataset

    data = config.data
    if device is None:
        where = train_device(config.train)
        device = str(where) if where.type == "cuda" else None
    common = {"frame": data.frame, "dbz_range": (data.dbz_min, data.dbz_max), "cubes": cubes,
              "device": device, "with_step": config.model.step_input}  # fmt: skip
    train_set = PackDataset(pack, "train", augment=data.augment, seed=config.train.seed, **common)
    val_set = PackDataset(pack, "val", **common)
    if (train_set.n_inputs, train_set.n_outputs) != (data.input_length, data.output_length):
        raise ConfigError(
            f"{pack}: cut for {train_set.n_inputs} -> {train_set.n_outputs} frames, the "
            f"configuration wants {data.input_length} -> {data.output_length}; rebuild it"
        )
    cut = float(train_set.meta["config"].get("min_step_minutes", 0.0))  # older packs: 0
    if cut != data.min_step_minutes:
        raise ConfigError(
            f"{pack}: cut with min_step_minutes = {cut:g}, the configuration wants "
            f"{data.min_step_minutes:g}; rebuild it"
        )
    names = train_set.cube_names()
    picked = cubes if cubes is not None else range(len(names))
    used = [names[k] for k in picked]
    _check_sizes(train_set, val_set, used, config)
    known = train_set.meta.get("pixel_m") or [None] * len(names)  # older packs: unknown
    pixels = [known[k] for k in picked]
    return _train(train_set, val_set, used, Path(out_dir), config, progress, deadline_s, pixels)


def _check_sizes(train_set, val_set, cubes: list[str], config: RunConfig) -> None:
    if len(train_set) == 0:
        raise ValueError(
            f"no training windows in {', '.join(cubes)}: the cubes are shorter than "
            f"{config.data.length} frames without gaps, or have too little echo "
            f"(min_coverage={config.data.min_coverage})"
        )
    if len(val_set) == 0:
        raise ValueError(
            f"no validation windows in {', '.join(cubes)}: the validation split "
            f"(val={config.data.val}) holds fewer than {config.data.length} gap-free frames "
            "with echo; use a longer archive (e.g. 'mimcast synth --frames 288') or change [data]"
        )


def training_pixel(pixels: list[float | None] | None) -> float | None:
    """The training grids' spacing a checkpoint records: the median of the cubes' (metres),
    None when any is unknown."""
    if not pixels or any(p is None for p in pixels):
        return None
    return float(statistics.median(pixels))


def _train(train_set, val_set, cubes: list[str], out: Path, config: RunConfig, progress: bool,
           deadline_s: float | None = None, pixels: list[float | None] | None = None):  # fmt: skip
    import json

    from mimcast.models.checkpoint import InputConfig
    from mimcast.models.train import train

    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(config.to_dict(), indent=1))
    data = config.data
    inputs = InputConfig(
        data.dbz_min, data.dbz_max, frame=data.frame, motion_frames=data.motion_frames,
        postprocess=data.postprocess, pixel_m=training_pixel(pixels),
    )  # fmt: skip
    extra = {
        "cubes": cubes,
        "train_windows": len(train_set),
        "val_windows": len(val_set),
    }
    return train(
        config.model, config.train, train_set, val_set, out,
        dbz_range=(data.dbz_min, data.dbz_max), extra=extra, progress=progress, inputs=inputs,
        deadline_s=deadline_s,
    )  # fmt: skip
