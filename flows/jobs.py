"""Plain-Python job entry points shared by the CLI and the Prefect flows (no Prefect here).

They join ``pipeline`` and ``models``: read a run configuration, build the datasets from
cubes, and call the training loop. A run configuration is one TOML file with three tables,
each checked against its dataclass (unknown keys are rejected with their name)::

    [model]   # models.mimnet.MIMNetConfig
    [data]    # pipeline.sequences.SequenceConfig
    [train]   # models.train.TrainConfig

The model's ``input_length``/``output_length`` are taken from ``[data]`` when ``[model]`` does
not set them, and must agree when both do.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.mimnet import MIMNetConfig
from models.train import TrainConfig, TrainResult
from pipeline.config import ConfigError, from_mapping, to_dict
from pipeline.sequences import SequenceConfig

#: The default run configuration shipped with mimcast (trains on 2 CPU cores in ~10 minutes).
DEFAULT_TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "data" / "train.toml"


@dataclass(frozen=True)
class RunConfig:
    """Model, data and training configuration of one run."""

    model: MIMNetConfig
    data: SequenceConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """Return plain data (for JSON/TOML and checkpoint metadata)."""
        return {
            "model": to_dict(self.model),
            "data": to_dict(self.data),
            "train": to_dict(self.train),
        }


def load_run_config(path: str | Path | None = None, **train_overrides: Any) -> RunConfig:
    """Read a run configuration (default: ``data/train.toml``); overrides go to ``[train]``."""
    path = Path(path) if path else DEFAULT_TRAIN_CONFIG
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: configuration file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = sorted(set(doc) - {"model", "data", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {unknown}; known: [model], [data], [train]")
    data = from_mapping(SequenceConfig, doc.get("data", {}), where=f"{path} [data]")
    model_doc = dict(doc.get("model", {}))
    for key, value in (("input_length", data.input_length), ("output_length", data.output_length)):
        if model_doc.setdefault(key, value) != value:
            raise ConfigError(
                f"{path}: [model] {key}={model_doc[key]} disagrees with [data] {key}={value}"
            )
    model = from_mapping(MIMNetConfig, model_doc, where=f"{path} [model]")
    train_doc = dict(doc.get("train", {}))
    train_doc.update({k: v for k, v in train_overrides.items() if v is not None})
    train = from_mapping(TrainConfig, train_doc, where=f"{path} [train]")
    return RunConfig(model, data, train)


def run_training(
    cubes: list[str | Path],
    out_dir: str | Path,
    config: RunConfig,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train MIMNet on ``cubes`` with ``config``; resume when ``out_dir`` holds a state."""
    import json

    from models.train import train
    from pipeline.sequences import RadarSequenceDataset

    for cube in cubes:
        if not Path(cube).exists():
            raise FileNotFoundError(f"{cube}: no such cube (run 'mimcast ingest' first)")
    train_set = RadarSequenceDataset(cubes, config.data, "train")
    val_set = RadarSequenceDataset(cubes, config.data, "val")
    if len(train_set) == 0:
        raise ValueError(
            f"no training windows in {', '.join(map(str, cubes))}: the cubes are shorter than "
            f"{config.data.length} frames without gaps, or have too little echo "
            f"(min_coverage={config.data.min_coverage})"
        )
    if len(val_set) == 0:
        raise ValueError(
            f"no validation windows in {', '.join(map(str, cubes))}: the validation split "
            f"(val={config.data.val}) holds fewer than {config.data.length} gap-free frames "
            "with echo; use a longer archive (e.g. 'mimcast synth --frames 288') or change [data]"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(config.to_dict(), indent=1))
    extra = {
        "cubes": [str(c) for c in cubes],
        "dbz_min": config.data.dbz_min,
        "dbz_max": config.data.dbz_max,
        "train_windows": len(train_set),
        "val_windows": len(val_set),
    }
    return train(
        config.model, config.train, train_set, val_set, out,
        dbz_range=(config.data.dbz_min, config.data.dbz_max), extra=extra, progress=progress,
    )  # fmt: skip


#: The checkpoint shipped with mimcast (trained on synthetic storms; see data/MODEL_CARD.md).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "mimnet_synthetic.safetensors"


def checkpoint_normalizer(extra: dict[str, Any]):
    """The dBZ normalisation a checkpoint was trained with (recorded in its metadata)."""
    from pipeline.sequences import Normalizer

    return Normalizer(float(extra.get("dbz_min", 0.0)), float(extra.get("dbz_max", 70.0)))


@dataclass
class NowcastOutputs:
    """Files written by one nowcast."""

    netcdf: Path
    reference_time: str
    pngs: list[Path]
    animation: Path | None


def run_nowcast(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    time: str = "latest",
    plot: bool = False,
    leads: tuple[int, ...] = (15, 30, 60),
    source: str | None = None,
    device: str = "auto",
) -> NowcastOutputs:
    """Nowcast from a Zarr cube with a checkpoint; write NetCDF (and quicklooks)."""
    from models.checkpoint import load_checkpoint
    from pipeline.ingest import open_cube
    from pipeline.netcdf import write_nowcast
    from pipeline.nowcast import NowcastOptions, nowcast

    ckpt = Path(checkpoint) if checkpoint else SHIPPED_CHECKPOINT
    model, extra = load_checkpoint(ckpt)
    cube = open_cube(cube_path)
    normalizer = checkpoint_normalizer(extra)
    name = source or Path(cube_path).name.removesuffix(".zarr")
    forecast = nowcast(cube, model, NowcastOptions(time=time, device=device),
                       normalizer=normalizer, source=name)  # fmt: skip
    path = write_nowcast(forecast, out_dir, source=name, checkpoint=f"{ckpt.name} "
                         f"(step {extra.get('step', '?')})")  # fmt: skip
    pngs, gif = [], None
    if plot:
        from pipeline.plots import animation, quicklook

        have = forecast["forecast_period"].values.tolist()
        stem = path.with_suffix("")
        for lead in [lead for lead in leads if lead in have] or have[-1:]:
            pngs.append(quicklook(forecast, lead, f"{stem}_{lead:03d}min.png"))
        gif = animation(forecast, f"{stem}.gif")
    ref = str(np.datetime64(forecast["forecast_reference_time"].values, "m"))
    return NowcastOutputs(path, ref, pngs, gif)


@dataclass
class EvaluateOutputs:
    """Files written by one hindcast evaluation."""

    scores_csv: Path
    report: Path
    figures: list[Path]
    n_forecasts: int
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class EvaluationPlan:
    """What a hindcast scores: plain, picklable data for tasks on any worker."""

    cube: str
    checkpoint: str
    refs: tuple[str, ...]
    n_inputs: int
    n_leads: int
    step: int
    methods: tuple[str, ...]
    device: str
    every: int


@functools.lru_cache(maxsize=4)
def _model(checkpoint: str):
    from models.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


@functools.lru_cache(maxsize=4)
def _cube(path: str):
    from pipeline.ingest import open_cube

    return open_cube(path)


def plan_evaluation(
    cube_path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    start: str | None = None,
    end: str | None = None,
    every: int = 1,
    methods: tuple[str, ...] = ("mimnet", "persistence", "extrapolation"),
    device: str = "auto",
) -> EvaluationPlan:
    """Choose the reference times of a hindcast (inputs and targets all observed)."""
    from pipeline.nowcast import step_minutes
    from pipeline.verify import reference_times

    ckpt = str(Path(checkpoint) if checkpoint else SHIPPED_CHECKPOINT)
    model, _ = _model(ckpt)
    cube = _cube(str(cube_path))
    n_in, n_out = model.config.input_length, model.config.output_length
    refs = reference_times(cube, n_in, n_out, start=start, end=end, every=every)
    if not refs:
        raise ValueError(
            f"{cube_path}: no reference time in [{start or 'start'}, {end or 'end'}] has "
            f"{n_in} observed input and {n_out} observed target frames"
        )
    stamps = tuple(str(np.datetime64(r, "m")) for r in refs)
    return EvaluationPlan(str(cube_path), ckpt, stamps, n_in, n_out, step_minutes(cube),
                          tuple(methods), device, every)  # fmt: skip


def _model_forecast(plan: EvaluationPlan):
    from pipeline.nowcast import NowcastOptions, nowcast

    model, extra = _model(plan.checkpoint)
    cube = _cube(plan.cube)
    normalizer = checkpoint_normalizer(extra)

    def forecast(ref) -> np.ndarray:
        options = NowcastOptions(time=str(np.datetime64(ref, "m")), device=plan.device)
        return nowcast(cube, model, options, normalizer=normalizer)["reflectivity"].values

    return forecast


def score_reference_time(plan: EvaluationPlan, ref: str):
    """Score every method at one reference time (a unit of work for any worker)."""
    from pipeline.verify import VerifyOptions, score_reference

    cube = _cube(plan.cube)
    options = VerifyOptions(methods=plan.methods)
    return score_reference(cube, np.datetime64(ref, "ns"), plan.n_inputs, plan.n_leads,
                           plan.step, _model_forecast(plan), options)  # fmt: skip


def finish_evaluation(plan: EvaluationPlan, parts: list, out_dir: str | Path) -> EvaluateOutputs:
    """Merge per-reference scores and write scores.csv, report.md and the figures."""
    from pipeline.plots import example_maps, skill_curves
    from pipeline.verify import (
        BASELINES,
        Scores,
        VerifyOptions,
        markdown_report,
        write_scores_csv,
    )

    options = VerifyOptions(methods=plan.methods)
    total = Scores(options)
    for part in parts:
        total.merge(part)
    rows = total.table()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "scores.csv"
    write_scores_csv(rows, csv_path)
    figures = skill_curves(rows, out)
    cube = _cube(plan.cube)
    refs = [np.datetime64(r, "ns") for r in plan.refs]
    # example maps for the reference time with the most echo
    wettest = max(refs, key=lambda r: float((cube["reflectivity"].sel(time=r).values > 30).sum()))
    index = int(np.flatnonzero(cube.time.values == wettest)[0])
    n_in, n_out = plan.n_inputs, plan.n_leads
    block = cube["reflectivity"].isel(time=slice(index - n_in + 1, index + n_out + 1)).values
    panels = {"observed": block[n_in:]}
    if "mimnet" in plan.methods:
        panels["MIMNet"] = _model_forecast(plan)(wettest)
    for name in ("extrapolation", "persistence"):
        if name in plan.methods:
            panels[name] = BASELINES[name](block[:n_in], n_out, options.motion_frames)
    leads = sorted({min(5, n_out - 1), n_out - 1})
    grid = cube.isel(time=0).assign_attrs(step=plan.step)
    figures.append(example_maps(grid, panels, leads, out / "examples.png",
                                f"reference time {np.datetime64(wettest, 'm')} UTC"))  # fmt: skip
    _, extra = _model(plan.checkpoint)
    notes = [
        f"cube: {plan.cube}; checkpoint: {Path(plan.checkpoint).name} "
        f"(step {extra.get('step', '?')})",
        f"reference times: {len(refs)} from {plan.refs[0]} to {plan.refs[-1]} UTC, every "
        f"{plan.every} frame(s) of {plan.step} min",
        "methods: " + ", ".join(plan.methods) + "; persistence repeats the last observed "
        "frame, extrapolation advects it with pysteps' Lucas-Kanade motion (semi-Lagrangian)",
        "scores on pixels valid in the observation and the last input; dBZ floored at 0",
    ]
    report = out / "report.md"
    report.write_text(markdown_report(rows, title="mimcast hindcast: skill per lead time",
                                      notes=notes, images=[p.name for p in figures]))  # fmt: skip
    return EvaluateOutputs(csv_path, report, figures, len(refs), rows)


def run_evaluate(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    start: str | None = None,
    end: str | None = None,
    every: int = 1,
    scheduler: str | None = None,
    methods: tuple[str, ...] = ("mimnet", "persistence", "extrapolation"),
    device: str = "auto",
    progress: bool = False,
) -> EvaluateOutputs:
    """Hindcast over a cube: MIMNet and baselines per reference time, in parallel with dask."""
    from pipeline.verify import VerifyOptions, hindcast

    plan = plan_evaluation(cube_path, checkpoint=checkpoint, start=start, end=end, every=every,
                           methods=methods, device=device)  # fmt: skip
    scores = hindcast(_cube(plan.cube), [np.datetime64(r, "ns") for r in plan.refs],
                      plan.n_inputs, plan.n_leads, plan.step, _model_forecast(plan),
                      VerifyOptions(methods=plan.methods), scheduler=scheduler,
                      progress=progress)  # fmt: skip
    return finish_evaluation(plan, [scores], out_dir)
