"""Hindcast evaluation jobs: plan, score per reference time, merge and report.

The plain application layer that ``mimcast evaluate`` and the Prefect ``evaluate`` flow both
call. Methods come from the forecaster registry (:mod:`mimcast.pipeline.forecasters`); a plan
is plain, picklable data, so a reference time is a unit of work for any Dask worker.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mimcast.pipeline.cube import VARIABLE, open_cube, step_minutes
from mimcast.pipeline.defaults import EVALUATE_EVERY, EVALUATE_METHODS, MIN_STEP_MINUTES
from mimcast.pipeline.forecasters import at_time_step, get_forecaster

log = logging.getLogger(__name__)


@dataclass
class EvaluateOutputs:
    """Files written by one hindcast evaluation."""

    scores_csv: Path
    report: Path
    figures: list[Path]
    n_forecasts: int
    rows: list[dict[str, Any]]
    differences: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # significance


@dataclass(frozen=True)
class EvaluationPlan:
    """What a hindcast scores: the cube, the forecasters by label, the reference times."""

    cube: str
    forecasters: dict[str, Any]  # label -> forecaster (registry objects, picklable)
    refs: tuple[str, ...]
    n_inputs: int
    n_leads: int
    step: int
    every: int


def build_forecasters(
    methods: tuple[str, ...] | list[str],
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    postprocess: str | None = None,
    min_step_minutes: float = MIN_STEP_MINUTES,
    refine: int | None = None,
) -> dict[str, Any]:
    """Build the registered ``methods`` (labels = names) with one set of options."""
    if not methods:
        raise ValueError("no forecast method to evaluate")
    options = {"checkpoint": str(checkpoint) if checkpoint else None, "device": device,
               "postprocess": postprocess, "min_step_minutes": min_step_minutes,
               "refine": refine}  # fmt: skip
    return {name: get_forecaster(name, **options) for name in dict.fromkeys(methods)}


def methods_at_step(forecasters: dict[str, Any], step: float) -> tuple[dict[str, Any], int, int]:
    """Set every method to the archive's time step; return them, the input frames they need
    together and the lead steps they can all score.

    A method with a fixed horizon (a model's) bounds the leads; without one, the shortest
    default horizon among the methods does.
    """
    forecasters = {label: at_time_step(fc, step) for label, fc in forecasters.items()}
    n_in = max(fc.input_frames for fc in forecasters.values())
    horizons = [fc.max_leads for fc in forecasters.values() if fc.max_leads is not None]
    horizon = min(horizons or [fc.default_leads for fc in forecasters.values()])
    return forecasters, n_in, horizon


def plan_evaluation(
    cube_path: str | Path,
    forecasters: dict[str, Any],
    *,
    start: str | None = None,
    end: str | None = None,
    every: int = EVALUATE_EVERY,
    leads: int | None = None,
) -> EvaluationPlan:
    """Choose the reference times of a hindcast (inputs and targets all observed).

    ``leads``: lead steps to score; default the shortest horizon among the methods with a
    fixed one (a model's), else the registry default. Without ``leads``, an archive too short
    for that horizon is scored at the most lead steps it allows, and a warning says so.
    """
    from mimcast.pipeline.verify import scorable_leads

    if every < 1:
        raise ValueError(f"every={every}: must be >= 1")
    cube = open_cube(cube_path)
    step = step_minutes(cube)
    forecasters, n_in, horizon = methods_at_step(forecasters, step)
    n_out = leads or horizon
    if n_out < 1:
        raise ValueError(f"leads={n_out}: must be >= 1")
    if n_out > horizon:
        raise ValueError(f"leads={n_out}: a method predicts only {horizon} lead steps")
    most, refs = scorable_leads(cube, n_in, n_out, start=start, end=end, every=every)
    if most < n_out and (leads is not None or not most):
        hint = f"; {most} lead steps can be scored (--steps {most})" if most else ""
        raise ValueError(
            f"{cube_path}: no reference time in [{start or 'start'}, {end or 'end'}] has "
            f"{n_in} observed input and {n_out} observed target frames{hint}"
        )
    if most < n_out:
        log.warning("%s: too short for %d lead steps after %d inputs; scoring %d lead steps "
                    "(%g minutes)", cube_path, n_out, n_in, most, most * step)  # fmt: skip
        n_out = most
    stamps = tuple(str(np.datetime64(r, "m")) for r in refs)
    return EvaluationPlan(str(cube_path), forecasters, stamps, n_in, n_out, step, every)


def score_reference_time(plan: EvaluationPlan, ref: str):
    """Score every method at one reference time (a unit of work for any worker)."""
    from mimcast.pipeline.verify import VerifyOptions, score_reference

    cube = open_cube(plan.cube)
    return score_reference(cube, np.datetime64(ref, "ns"), plan.n_inputs, plan.n_leads,
                           plan.step, plan.forecasters, VerifyOptions())  # fmt: skip


def _describe(label: str, fc) -> str:
    about = fc.describe() if hasattr(fc, "describe") else fc.description
    return f"{label}: {about}"


def finish_evaluation(plan: EvaluationPlan, parts: list, out_dir: str | Path) -> EvaluateOutputs:
    """Merge per-reference scores and write scores.csv, report.md and the figures.

    With one part per reference time (in the plan's order), also the model-minus-baseline
    differences with intervals from resampled reference times (differences.csv, a report
    section and a figure; :mod:`mimcast.pipeline.significance`).
    """
    from mimcast.pipeline.plots import difference_curves, example_maps, skill_curves
    from mimcast.pipeline.significance import (
        Group,
        block_length,
        differences,
        markdown_section,
        write_differences_csv,
    )
    from mimcast.pipeline.verify import VerifyOptions, markdown_report, merged, write_scores_csv

    total = merged(parts, VerifyOptions())
    rows = total.table()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "scores.csv"
    write_scores_csv(rows, csv_path)
    figures = skill_curves(rows, out)
    diffs = []
    if len(parts) == len(plan.refs):  # one part per reference time: they can be resampled
        block = block_length(plan.refs, plan.n_leads * plan.step)
        diffs = differences([Group(tuple(parts), block)])
        write_differences_csv(diffs, out / "differences.csv")
        figures += difference_curves(diffs, out)
    cube = open_cube(plan.cube)
    refs = [np.datetime64(r, "ns") for r in plan.refs]
    figures.append(_examples(cube, plan, refs, out / "examples.png", example_maps))
    notes = [
        f"cube: {plan.cube}",
        f"reference times: {len(refs)} from {plan.refs[0]} to {plan.refs[-1]} UTC, every "
        f"{plan.every} frame(s) of {plan.step} min; {plan.n_leads} lead steps",
        *(_describe(label, fc) for label, fc in plan.forecasters.items()),
        "scores on pixels valid in the observation, the last input and every method's "
        "forecast (echo advected in from outside the grid is unknown); dBZ floored at 0",
    ]
    if diffs:
        notes.append(f"intervals: reference times resampled in blocks of {block} (forecasts "
                     "of consecutive reference times verify on overlapping frames)")  # fmt: skip
    report = out / "report.md"
    report.write_text(markdown_report(rows, title="mimcast hindcast: skill per lead time",
                                      notes=notes, images=[p.name for p in figures],
                                      sections=markdown_section(diffs)))  # fmt: skip
    return EvaluateOutputs(csv_path, report, figures, len(refs), rows, diffs)


def _examples(cube: xr.Dataset, plan: EvaluationPlan, refs, path: Path, draw) -> Path:
    """Maps of every method at the reference time with the most echo."""
    wettest = max(refs, key=lambda r: float((cube[VARIABLE].sel(time=r).values > 30).sum()))
    index = int(np.flatnonzero(cube.time.values == wettest)[0])
    n_in, n_out = plan.n_inputs, plan.n_leads
    block = cube[VARIABLE].isel(time=slice(index - n_in + 1, index + n_out + 1)).values
    panels = {"observed": block[n_in:]}
    for label, fc in plan.forecasters.items():
        if label != "sprog":  # S-PROG is slow and smooth: the curves say enough
            panels[label] = fc(block[:n_in], n_out)
    leads = sorted({min(5, n_out - 1), n_out - 1})
    grid = cube.isel(time=0).assign_attrs(step=plan.step)
    return draw(grid, panels, leads, path, f"reference time {np.datetime64(wettest, 'm')} UTC")


def run_evaluate(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    methods: tuple[str, ...] = EVALUATE_METHODS,
    forecasters: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    postprocess: str | None = None,
    start: str | None = None,
    end: str | None = None,
    every: int = EVALUATE_EVERY,
    leads: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    progress: bool = False,
    min_step_minutes: float = MIN_STEP_MINUTES,
    refine: int | None = None,
) -> EvaluateOutputs:
    """Hindcast over a cube: every method per reference time, in parallel with dask.

    ``forecasters`` (label -> forecaster) replaces ``methods`` when given, so one hindcast can
    compare several checkpoints or settings of one method.
    """
    from mimcast.pipeline.verify import VerifyOptions, score_references

    fcs = forecasters or build_forecasters(methods, checkpoint=checkpoint, device=device,
                                           postprocess=postprocess,
                                           min_step_minutes=min_step_minutes,
                                           refine=refine)  # fmt: skip
    plan = plan_evaluation(cube_path, fcs, start=start, end=end, every=every, leads=leads)
    parts = score_references(open_cube(plan.cube), [np.datetime64(r, "ns") for r in plan.refs],
                             plan.n_inputs, plan.n_leads, plan.step, plan.forecasters,
                             VerifyOptions(), scheduler=scheduler, progress=progress)  # fmt: skip
    return finish_evaluation(plan, parts, out_dir)
