"""Leave-one-archive-out: for each archive, train on all the others, evaluate on it; pool.

``mimcast loao CUBE... --config data/real.toml --out DIR`` runs three resumable stages:

1. ``pack``: cut every cube into one training pack (``DIR/pack.npz``, :mod:`pipeline.packs`).
2. ``train``: for each archive and each variant (``lagrangian``, ``eulerian``), train on the
   pack without that archive into ``DIR/folds/<archive>/<variant>/``; with ``final``, also
   train the model to ship on every archive except ``exclude`` into ``DIR/final/<variant>/``.
   Runs resume from their state; ``jobs`` trains several at once (one process each, for a
   GPU). ``deadline_s`` stops the stage in time: each run stops itself at the deadline,
   validated and checkpointed, and runs not yet started are left; the same command goes on.
3. ``evaluate``: ``mimcast evaluate`` on each left-out archive with its fold's models
   (each with and without probability matching) against persistence, extrapolation and
   S-PROG, on the same pixels; then pool the scores of every archive per lead *step*
   (archives differ in time step) into ``DIR/pooled/`` (scores.csv, report.md, skill curves)
   and ``DIR/per_archive.csv``. Each archive's score accumulators are kept in
   ``DIR/evaluation/<archive>/accumulators.json``, and the pool takes every archive scored
   into ``DIR``: folds evaluated in separate runs (one a session, say) pool exactly as if
   they had been evaluated together. Scoring other methods of an archive at the same
   reference times (a variant trained later) adds them to its stored scores.

``--stage compare --against EARLIER`` (not part of ``all``) sets each named archive's models
as scored into DIR against the same models in an earlier evaluation on the same reference
times: a retrained fold against the one it replaces, paired forecast for forecast
(:func:`compare`).

Archives are named by their cube's file name (``rmi.zarr`` -> ``rmi``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mimcast.pipeline.config import ConfigError
from mimcast.pipeline.defaults import FRAMES, POSTPROCESS

VARIANTS = FRAMES  # one model per frame
ACCUMULATORS = "accumulators.json"  # an archive's stored scores, in DIR/evaluation/<archive>/

log = logging.getLogger("mimcast")


def archive_name(cube: str | Path) -> str:
    """``.../rmi.zarr`` -> ``rmi``."""
    return Path(cube).name.removesuffix(".zarr")


def _variant_config(config, variant: str):
    """The run configuration of one variant (a frame), with the frame's own model keys."""
    return config.in_frame(variant)


def run_dir(out: Path, fold: str, variant: str) -> Path:
    """Where one training run lives (``fold`` is an archive name or ``final``)."""
    return out / ("final" if fold == "final" else f"folds/{fold}") / variant


def build(cubes: list[str], out: Path, config, progress: bool = True) -> Path:
    """Stage 1: the pack of every cube (kept when it exists)."""
    from mimcast.pipeline.packs import build_pack

    pack = out / "pack.npz"
    if not pack.exists():
        build_pack(cubes, pack, config.data.pack_config(), progress=progress)
    return pack


def pack_archives(pack: Path) -> list[str]:
    """The archives a pack was built from, by index (the pack's own record, not the CLI's)."""
    from mimcast.pipeline.packs import pack_meta

    return [archive_name(c) for c in pack_meta(pack)["cubes"]]


def check_archives(pack: Path, given: list[str], *named: str) -> list[str]:
    """The pack's archives; a clear error when ``given`` (the cubes on the command line) or
    any ``named`` archive (a fold, an exclusion) is not one of them.

    A fold is the pack minus one archive by name: a misspelt fold would otherwise train on
    every archive, the "left-out" one included, and its scores would look like skill.
    """
    names = pack_archives(pack)
    if given and sorted(given) != sorted(names):
        raise ValueError(f"{pack} was built from {', '.join(names)}, not from the cubes given "
                         f"({', '.join(given)}): pass the same cubes, or another --out for a "
                         "new pack")  # fmt: skip
    unknown = [n for n in named if n not in names and n != "final"]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: no such archive in {pack} "
                         f"(archives: {', '.join(names)})")  # fmt: skip
    return names


def train_one(pack: Path, out: Path, config, fold: str, variant: str, names: list[str],
              exclude: tuple[str, ...] = (), device: str | None = None,
              progress: bool = False, deadline_s: float | None = None):  # fmt: skip
    """Train one fold (``fold``: the archive left out, or ``final``) and variant.

    ``names`` are the cubes given; the archives' indices come from the pack, which must hold
    the same archives.
    """
    from mimcast.pipeline.training import train_from_pack

    names = check_archives(pack, names, fold, *exclude)
    if fold == "final":
        keep = [k for k, n in enumerate(names) if n not in exclude]
    else:
        keep = [k for k, n in enumerate(names) if n != fold]
    cfg = _variant_config(config, variant)
    _check_init(cfg.train.init, fold, exclude)
    return train_from_pack(pack, run_dir(out, fold, variant), cfg, cubes=keep,
                           progress=progress, device=device, deadline_s=deadline_s)  # fmt: skip


def _check_init(init: str, fold: str, exclude: tuple[str, ...]) -> None:
    """A run that holds archives out must not start from weights that saw them."""
    if not init:
        return
    from mimcast.models.checkpoint import read_header

    seen = {archive_name(c) for c in read_header(init)[3].get("cubes", [])}
    held = sorted(seen & ({*exclude} if fold == "final" else {fold}))
    if held:
        raise ConfigError(f"[train] init = {init}: it was trained on {', '.join(held)}, which "
                          f"this run ({fold}) holds out; start it from a model that never saw "
                          "them")  # fmt: skip


def train_all(
    cubes: list[str],
    out: Path,
    config_path: str | None,
    config,
    *,
    variants: tuple[str, ...] = VARIANTS,
    final: bool = True,
    exclude: tuple[str, ...] = (),
    jobs: int = 1,
    deadline_s: float | None = None,
    max_steps: int | None = None,
    final_max_steps: int | None = None,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Stage 2: every fold and variant (and the final model), ``jobs`` processes at a time."""
    pack = out / "pack.npz"
    names = check_archives(pack, [archive_name(c) for c in cubes], *exclude)
    runs = [(n, v) for n in names for v in variants]
    if final:
        runs = [("final", variants[0]), *runs]
    for fold, _ in runs:  # every run's start, before any trains
        _check_init(config.train.init, fold, exclude)
    started = time.monotonic()

    def left() -> float | None:  # seconds to the deadline
        return None if deadline_s is None else deadline_s - (time.monotonic() - started)

    def steps_of(fold: str) -> int | None:
        return final_max_steps if fold == "final" and final_max_steps else max_steps

    if jobs <= 1:
        for fold, variant in runs:
            if (remaining := left()) is not None and remaining <= 0:
                log.info(f"deadline: {fold}/{variant} and the runs after it left for later")
                break
            cfg = config
            if steps := steps_of(fold):
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(
                    cfg.train, max_steps=steps))  # fmt: skip
            train_one(pack, out, cfg, fold, variant, names, exclude, progress=progress,
                      deadline_s=remaining)  # fmt: skip
        return runs
    pending, running = list(runs), []
    while pending or running:
        while pending and len(running) < jobs:
            if (remaining := left()) is not None and remaining <= 0:
                log.info(f"deadline: {len(pending)} run(s) left for later")
                pending.clear()
                break
            fold, variant = pending.pop(0)
            cmd = [sys.executable, "-m", "mimcast.pipeline.cli", "loao", *cubes, "--out",
                   str(out), "--stage", "train", "--only", f"{fold}/{variant}", "--quiet",
                   "--exclude", *(exclude or ("none",)),
                   # the overrides given to this command, as the runs in this process get them
                   "--select", config.train.select, "--device", config.train.device]  # fmt: skip
            if config_path:
                cmd += ["--config", config_path]
            if config.train.init:
                cmd += ["--init", config.train.init]
            if steps := steps_of(fold):
                cmd += ["--max-steps", str(steps)]
            if remaining is not None:
                cmd += ["--deadline-s", repr(remaining)]  # > 0: not rounded to "0.000"
            where = run_dir(out, fold, variant)
            where.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(cmd, stdout=(where / "train.log").open("a"),
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            running.append((proc, fold, variant))
            if progress:
                log.info(f"training {fold}/{variant} (pid {proc.pid})")
        time.sleep(2)
        for item in list(running):
            proc, fold, variant = item
            if proc.poll() is not None:
                running.remove(item)
                if progress:
                    log.info(f"{fold}/{variant} ended ({proc.returncode})")
    return runs


def model_forecasters(variant: str, checkpoint: str | Path, **options) -> dict[str, Any]:
    """One model's forecasters, one per post-processing, labelled as the scores name them
    (``mimnet-<variant>`` and ``mimnet-<variant>-<post>``); ``options`` go to each
    :class:`~mimcast.pipeline.forecasters.MIMNetForecaster`.

    Called in this order at a reference time, they integrate the motion once: pm-advected
    comes first, moving the last observation along the trajectories of the forecast it
    computes, and the others take that forecast from the cache. (The example maps, drawn
    afterwards from the cache, move pm-advected's reference separately.)
    """
    from mimcast.pipeline.forecasters import MIMNetForecaster

    forecasters = {}
    for post in sorted(POSTPROCESS, key=lambda p: p != "pm-advected"):
        label = f"mimnet-{variant}" + ("" if post == "none" else f"-{post}")
        forecasters[label] = MIMNetForecaster(str(checkpoint), postprocess=post, **options)
    return forecasters


def _lead_steps(scores, step: int):
    """Scores keyed by lead step instead of minutes (archives differ in time step)."""
    out = copy.deepcopy(scores)
    out.data = {m: {lead // step: slot for lead, slot in leads.items()}
                for m, leads in scores.data.items()}  # fmt: skip
    return out


def evaluate_all(
    cubes: list[str],
    out: Path,
    *,
    variants: tuple[str, ...] = VARIANTS,
    baselines: tuple[str, ...] = ("persistence", "extrapolation", "sprog"),
    max_refs: int = 6,
    device: str = "auto",
    refine: int | None = None,
    progress: bool = True,
) -> Path:
    """Stage 3: evaluate every left-out archive, pool per lead step, write the tables.

    ``refine``: the models run on grids this many times finer (None: each checkpoint's
    training grid decides; :class:`~mimcast.pipeline.forecasters.MIMNetForecaster`).
    """
    from mimcast.pipeline.atomic import atomic_write_json
    from mimcast.pipeline.cube import open_cube, step_minutes
    from mimcast.pipeline.evaluation import EvaluationPlan, finish_evaluation, methods_at_step
    from mimcast.pipeline.forecasters import get_forecaster
    from mimcast.pipeline.plots import difference_curves, skill_curves
    from mimcast.pipeline.significance import (
        differences,
        markdown_section,
        write_differences_csv,
    )
    from mimcast.pipeline.verify import (
        Scores,
        VerifyOptions,
        markdown_report,
        merged,
        scorable_leads,
        score_references,
        write_scores_csv,
    )

    scored: list[str] = []
    for cube_path in cubes:
        name = archive_name(cube_path)
        forecasters: dict[str, Any] = {}
        for variant in variants:
            best = run_dir(out, name, variant) / "best.safetensors"
            if not best.exists():
                log.info(f"{name}: no {variant} model ({best}); left out")
                continue
            forecasters |= model_forecasters(variant, best, device=device, refine=refine)
        for base in baselines:
            forecasters[base] = get_forecaster(base)
        cube = open_cube(cube_path)
        step = step_minutes(cube)
        forecasters, n_in, n_leads = methods_at_step(forecasters, step)
        n_leads, refs = scorable_leads(cube, n_in, n_leads)
        if not refs:
            log.info(f"{name}: too short for any forecast; left out")
            continue
        picks = np.unique(np.linspace(0, len(refs) - 1, min(max_refs, len(refs))).round())
        refs = [refs[int(i)] for i in picks]
        if progress:
            log.info(f"evaluating {name}: {len(refs)} reference times, {n_leads} leads of "
                  f"{step} min, {len(forecasters)} methods")  # fmt: skip
        started = time.monotonic()
        parts = score_references(cube, refs, n_in, n_leads, step, forecasters, VerifyOptions())
        if progress:
            log.info(f"{name} scored in {time.monotonic() - started:.0f} s")
        plan = EvaluationPlan(str(cube_path), forecasters,
                              tuple(str(np.datetime64(r, "m")) for r in refs), n_in, n_leads,
                              step, 1)  # fmt: skip
        by_reference = [[ref, part.state()] for ref, part in zip(plan.refs, parts, strict=True)]
        record = {"archive": name, "step_minutes": step, "inference": _precision(device),
                  "refine": refine or "auto", "by_reference": by_reference}  # fmt: skip
        stored_path = out / "evaluation" / name / ACCUMULATORS
        if stored_path.exists():
            record = keep_stored_methods(json.loads(stored_path.read_text()), record)
            if "kept" in record:  # the report and the pooled scores include the kept methods
                parts = [Scores.from_state(state, VerifyOptions())
                         for _, state in record["by_reference"]]  # fmt: skip
        scores = merged(parts)
        finish_evaluation(plan, parts, out / "evaluation" / name)
        # the pooled accumulators, and each reference time's: those let the pools resample
        # reference times for confidence intervals (mimcast.pipeline.significance)
        atomic_write_json(stored_path, {
            **record, "cube": str(cube_path),
            "scored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scores": scores.state()}, indent=None)  # fmt: skip
        scored.append(name)
    # pool every archive scored into DIR, in this run or an earlier one
    pooled, pooled_minutes = Scores(VerifyOptions()), Scores(VerifyOptions())
    groups: dict[str, list[Any]] = {"pooled": [], "pooled_minutes": []}
    per_archive: list[dict[str, Any]] = []
    names: list[str] = []
    archives = _stored_archives(out)
    for path, stored, minutes in archives:
        by_step = _lead_steps(minutes, stored["step_minutes"])
        pooled.merge(by_step)
        pooled_minutes.merge(minutes)
        for where, group in _groups(stored, minutes).items():
            groups[where].append(group)
        names.append(stored["archive"])
        if stored["archive"] not in scored:
            log.info(f"pooling {stored['archive']} as scored on {stored['scored_at']}"
                     f"{' in ' + stored['inference'] if 'inference' in stored else ''} "
                     f"({path})")  # fmt: skip
        for row in by_step.table():
            if (row["metric"], row["threshold"]) in (("MSE", ""), ("CSI", "20 dBZ"),
                                                     ("CSI", "30 dBZ"),
                                                     ("FSS", "30 dBZ @ 11 px")):  # fmt: skip
                per_archive.append({"archive": stored["archive"],
                                    "step_minutes": stored["step_minutes"], **row})  # fmt: skip
    if not names:
        raise ValueError(f"{out}: no archive could be scored (no model, or too short)")
    for method in _not_on_every_archive(archives):
        pooled.data.pop(method, None)
        pooled_minutes.data.pop(method, None)
    for pool, where, title, lead_label, lead_note in (
        (pooled, "pooled", "pooled skill per lead step", "lead time (archive time steps)",
         "lead times are time steps of each archive (archives differ in time step: see "
         "per_archive.csv; on archives of under 4 minutes a model step spans several)"),
        (pooled_minutes, "pooled_minutes", "pooled skill per lead time in minutes",
         "lead time (min)",
         "lead times in minutes: each lead pools the archives whose steps reach it"),
    ):  # fmt: skip
        target = out / where
        target.mkdir(parents=True, exist_ok=True)
        rows = pool.table()
        write_scores_csv(rows, target / "scores.csv")
        figures = skill_curves(rows, target, lead_label)
        diffs = differences(groups[where])
        write_differences_csv(diffs, target / "differences.csv")
        figures += difference_curves(diffs, target, lead_label)
        notes = ["leave-one-archive-out: each archive scored with models trained on the others",
                 f"archives: {', '.join(names)}", lead_note,
                 "intervals: archives resampled, then each archive's reference times (in "
                 "blocks where forecasts overlap); an archive stored without per-reference "
                 "scores is resampled as a whole"]  # fmt: skip
        (target / "report.md").write_text(markdown_report(
            rows, title=f"mimcast leave-one-archive-out: {title}", notes=notes,
            images=[p.name for p in figures],
            sections=markdown_section(diffs, lead_label=lead_label)))  # fmt: skip
    with (out / "per_archive.csv").open("w", newline="") as fh:
        fields = ["archive", "step_minutes", "method", "lead_time", "metric", "threshold",
                  "value", "n"]  # fmt: skip
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(per_archive)
    return out / "pooled"


def same_forecasts(a: dict, b: dict) -> bool:
    """Whether two stored records of an archive's scores (``accumulators.json``) scored the
    same reference times at the same step and precision, one by one: then their methods
    are paired, forecast for forecast."""
    refs = [[ref for ref, _ in r.get("by_reference", [])] for r in (a, b)]
    return (bool(refs[0]) and refs[0] == refs[1]
            and a.get("step_minutes") == b.get("step_minutes")
            and a.get("inference") == b.get("inference"))  # fmt: skip


def keep_stored_methods(stored: dict, new: dict) -> dict:
    """``new``'s record of an archive's scores, with the methods ``stored`` (an earlier
    ``accumulators.json`` of the archive) has and ``new`` lacks: scoring one more variant into
    DIR adds it to the archive's scores instead of replacing the others.

    Only where both scored the same reference times at the same step and precision: otherwise
    the stored scores are of other forecasts and ``new`` replaces them (said in the log).
    Methods in both take ``new``'s scores. Each kept method says when it was scored
    (``kept``).
    """
    name = new["archive"]
    if not same_forecasts(stored, new):
        log.info(f"{name}: the stored scores ({stored.get('scored_at')}) are of other reference "
                 "times, step or precision: replaced")  # fmt: skip
        return new
    extra = [m for m in stored["by_reference"][0][1]["data"]
             if m not in new["by_reference"][0][1]["data"]]  # fmt: skip
    if not extra:
        return new
    log.info(f"{name}: keeping {', '.join(extra)} as scored on {stored.get('scored_at')}")
    by_reference = []
    for (ref, old), (_, state) in zip(stored["by_reference"], new["by_reference"], strict=True):
        data = {**state["data"], **{m: old["data"][m] for m in extra}}
        by_reference.append([ref, {**state, "data": data}])
    kept = {m: stored.get("kept", {}).get(m, stored.get("scored_at")) for m in extra}
    return {**new, "by_reference": by_reference, "kept": kept}


def _precision(device: str) -> str:
    """The models' inference precision on ``device`` (MIMCAST_BF16 or the machine decides)."""
    from mimcast.models.device import inference_bf16, resolve_device

    return "bf16" if inference_bf16(None, resolve_device(device)) else "fp32"


def _stored_archives(out: Path) -> list[tuple[Path, dict, Any]]:
    """Every archive scored into ``out``: (path, stored record, its scores by minutes)."""
    from mimcast.pipeline.verify import Scores, VerifyOptions

    found = []
    for path in sorted((out / "evaluation").glob(f"*/{ACCUMULATORS}")):
        stored = json.loads(path.read_text())
        found.append((path, stored, Scores.from_state(stored["scores"], VerifyOptions())))
    return found


def _groups(stored: dict, minutes) -> dict[str, Any]:
    """An archive's reference times for resampling, by lead step and by minutes: each
    reference time's scores where stored, else the archive's pooled scores as one part."""
    from mimcast.pipeline.significance import Group, block_length
    from mimcast.pipeline.verify import Scores, VerifyOptions

    by_reference = stored.get("by_reference", [])
    refs = [ref for ref, _ in by_reference]
    parts = [Scores.from_state(state, VerifyOptions()) for _, state in by_reference] or [minutes]
    horizon = max((lead for leads in minutes.data.values() for lead in leads), default=0)
    block = block_length(refs, horizon) if refs else 1
    step = stored["step_minutes"]
    return {"pooled": Group(tuple(_lead_steps(p, step) for p in parts), block),
            "pooled_minutes": Group(tuple(parts), block)}  # fmt: skip


def _not_on_every_archive(archives) -> list[str]:
    """Methods missing from some archive: left out of the pools, with a warning.

    A pooled row is a sum over archives, so a method scored on fewer archives than the others
    (a fold without its model, say) would be compared on other forecasts than theirs. Its
    per-archive rows stay in ``per_archive.csv``.
    """
    methods = {m for *_, scores in archives for m in scores.data}
    dropped = []
    for method in sorted(methods):
        lacking = [stored["archive"] for _, stored, scores in archives
                   if method not in scores.data]  # fmt: skip
        if lacking:
            dropped.append(method)
            log.warning(f"{method}: not scored on {', '.join(lacking)}; left out of the pooled "
                        "tables, which compare methods on the same archives (per_archive.csv "
                        "keeps it)")  # fmt: skip
    return dropped


def _read_pooled(path: Path) -> dict[tuple[str, str, str, int], float]:
    with path.open() as fh:
        return {(r["method"], r["metric"], r["threshold"], int(r["lead_time"])): float(r["value"])
                for r in csv.DictReader(fh)}  # fmt: skip


def _pooled_tables(pooled, methods, shown, head, *, fss: bool = False, counts=None) -> list[str]:
    """Markdown tables (CSI 20/30 dBZ, MSE, optionally FSS) of pooled scores at ``shown``."""
    lines = []
    metrics = [("CSI", "20 dBZ", "CSI ≥ 20 dBZ"), ("CSI", "30 dBZ", "CSI ≥ 30 dBZ"),
               ("MSE", "", "MSE (dBZ²)")]  # fmt: skip
    if fss:
        metrics.append(("FSS", "30 dBZ @ 11 px", "FSS ≥ 30 dBZ, 11 px"))
    for metric, threshold, label in metrics:
        lines += [f"**{label}**", "", "| method | " + " | ".join(head(s) for s in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]  # fmt: skip
        if counts is not None:
            lines.append("| archives | " + " | ".join(str(c) for c in counts) + " |")
        for m in methods:
            cells = [pooled.get((m, metric, threshold, s), float("nan")) for s in shown]
            lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" if metric != "MSE" else f"{v:.1f}"
                                                  for v in cells) + " |")  # fmt: skip
        lines.append("")
    return lines


def _significance_tables(out: Path, at_minutes: int = 60) -> list[str]:
    """Markdown: leads where each model is significantly better or worse than each baseline,
    pooled by lead step and by minutes, and the differences at ``at_minutes``."""
    from mimcast.pipeline.significance import (
        METRICS,
        MIN_UNITS,
        VERDICTS,
        cell,
        label,
        read_differences_csv,
        verdict_counts,
    )

    found = {where: read_differences_csv(path) for where in ("pooled", "pooled_minutes")
             if (path := out / where / "differences.csv").exists()}  # fmt: skip
    if not found:
        return []
    head = " | ".join(label(*m) for m in METRICS)
    lines = ["", "### Is the difference real? (95 % intervals: archives resampled, then their "
             "reference times)", "", "Leads where the model is better / worse / undecided / "
             f"too few to tell (under {MIN_UNITS} archives), pooled by lead step and by minutes "
             "(`pooled*/differences.csv`). At a lead one archive reaches alone, its "
             "reference times are resampled (column `archives` there: 1).", "",
             f"| pool | model | baseline | {head} |",
             "|---" * (len(METRICS) + 3) + "|"]  # fmt: skip
    for where, rows in found.items():
        counts, none = verdict_counts(rows), [0] * len(VERDICTS)
        for model, base in dict.fromkeys((r["method"], r["baseline"]) for r in rows):
            cells = [" / ".join(map(str, counts.get((model, base, *m), none))) for m in METRICS]
            lines.append(f"| {where} | {model} | {base} | " + " | ".join(cells) + " |")
    rows = [r for r in found.get("pooled_minutes", []) if r["lead_time"] == at_minutes]
    if rows:
        lines += ["", f"At {at_minutes} min (difference, model minus baseline, and interval):",
                  "", f"| model | baseline | archives | {head} |",
                  "|---" * (len(METRICS) + 3) + "|"]  # fmt: skip
        for model, base in dict.fromkeys((r["method"], r["baseline"]) for r in rows):
            mine = {(r["metric"], r["threshold"]): r for r in rows
                    if (r["method"], r["baseline"]) == (model, base)}  # fmt: skip
            archives = next(iter(mine.values()))["archives"]
            lines.append(f"| {model} | {base} | {archives} | "
                         + " | ".join(cell(mine.get(m)) for m in METRICS) + " |")  # fmt: skip
    return [*lines, ""]


def summary(out: Path) -> str:
    """Markdown tables of a finished run: pooled scores per lead step and per lead time in
    minutes, and per-archive verdicts.

    Written to ``DIR/summary.md``; the model card quotes it.
    """
    pooled = _read_pooled(out / "pooled" / "scores.csv")
    methods = sorted({k[0] for k in pooled}, key=lambda m: (not m.startswith("mimnet"), m))
    steps = sorted({k[3] for k in pooled})
    lines = ["### Pooled over the left-out archives (lead in archive time steps)", ""]
    lines += _pooled_tables(pooled, methods, [s for s in (1, 2, 3, 6, 9, 12) if s in steps],
                            lambda s: f"+{s}", fss=True)  # fmt: skip
    rows: dict[tuple[str, str, str, str, int], float] = {}
    reach: dict[int, set[str]] = {}  # lead in minutes -> archives scored at it
    with (out / "per_archive.csv").open() as fh:
        for r in csv.DictReader(fh):
            lead = int(r["lead_time"])
            rows[(r["archive"], r["method"], r["metric"], r["threshold"], lead)] = float(r["value"])
            reach.setdefault(lead * int(float(r["step_minutes"])), set()).add(r["archive"])
    archives = sorted({k[0] for k in rows})
    if (by_minutes := out / "pooled_minutes" / "scores.csv").exists():
        shown = [m for m in (10, 20, 30, 45, 60, 90, 120) if m in reach]
        lines += ["### Pooled at the same lead time (minutes)", "",
                  "Each lead pools the archives whose steps reach it (row `archives`: how many).",
                  ""]  # fmt: skip
        lines += _pooled_tables(_read_pooled(by_minutes), methods, shown, lambda m: f"{m} min",
                                counts=[len(reach[m]) for m in shown])  # fmt: skip
    models = [m for m in methods if m.startswith("mimnet")]
    lines += ["### Per left-out archive: leads where the model wins", "",
              "| archive | model | MSE < persistence | CSI20 > persistence | "
              "MSE < extrapolation | CSI20 ≥ extrapolation | CSI30 ≥ extrapolation | "
              "MSE < S-PROG | CSI20 ≥ S-PROG |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def wins(a, m, base, metric, thr, better):
        leads = sorted({k[4] for k in rows if k[0] == a and k[1] == m and k[2] == metric
                        and k[3] == thr})  # fmt: skip
        ok = [
            s
            for s in leads
            if better(rows[(a, m, metric, thr, s)], rows.get((a, base, metric, thr, s), np.nan))
        ]
        return f"{len(ok)}/{len(leads)}"

    for a in archives:
        for m in models:
            lines.append(
                f"| {a} | {m} | {wins(a, m, 'persistence', 'MSE', '', lambda x, y: x < y)} | "
                f"{wins(a, m, 'persistence', 'CSI', '20 dBZ', lambda x, y: x > y)} | "
                f"{wins(a, m, 'extrapolation', 'MSE', '', lambda x, y: x < y)} | "
                f"{wins(a, m, 'extrapolation', 'CSI', '20 dBZ', lambda x, y: x >= y)} | "
                f"{wins(a, m, 'extrapolation', 'CSI', '30 dBZ', lambda x, y: x >= y)} | "
                f"{wins(a, m, 'sprog', 'MSE', '', lambda x, y: x < y)} | "
                f"{wins(a, m, 'sprog', 'CSI', '20 dBZ', lambda x, y: x >= y)} |"
            )
    lines += _significance_tables(out)
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


BEFORE = "before:"  # label prefix of the earlier evaluation's models in a comparison


def _stored_record(where: Path, name: str) -> tuple[Path, dict]:
    """An archive's stored scores in ``where``: a loao DIR (``evaluation/<name>/``), a folder
    of ``<name>.json`` (as ``data/loao``), or the file itself."""
    for path in (where / "evaluation" / name / ACCUMULATORS, where / f"{name}.json", where):
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"{where}: no stored scores of {name} (looked for "
                                f"evaluation/{name}/{ACCUMULATORS} and {name}.json)")  # fmt: skip
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a stored score record ({exc})") from exc
    if record.get("archive") != name:
        raise ValueError(f"{path}: holds the scores of {record.get('archive')!r}, not {name!r}")
    return path, record


def compare(cubes: list[str], out: Path, against: Path) -> Path:
    """Stage ``compare``: each archive's models as scored into ``out`` against the same
    models in an earlier evaluation (``against``: a loao DIR, or a folder of
    ``<archive>.json`` such as ``data/loao``), forecast for forecast.

    A retrained fold is scored on the same reference times as the one it replaces, so the
    two are paired like any two methods: the intervals of :mod:`significance` apply. Both
    records must have scored the same reference times at the same step and precision
    (:func:`same_forecasts`); the models compared are the ``mimnet*`` labels both have, and
    the earlier one is labelled ``before:<label>``. Per archive, and pooled by minutes where
    several: ``DIR/compare/<archive or pooled>/`` holds scores.csv (the models now and
    before, and the baselines as scored now), differences.csv (now minus before), skill and
    difference curves, and report.md with the leads where the models now are ahead.
    """
    from mimcast.pipeline.verify import Scores, VerifyOptions, merged

    if not cubes:
        raise ValueError("compare: name the archives (their cubes) to compare")
    units: list[tuple[str, dict, str]] = []
    for cube in cubes:
        name = archive_name(cube)
        new_path, new = _stored_record(out, name)
        old_path, old = _stored_record(against, name)
        if not same_forecasts(old, new):
            raise ValueError(f"{name}: {old_path} and {new_path} are not of the same reference "
                             "times, step and precision; score the new models with the same "
                             "--max-refs and MIMCAST_BF16 as the earlier ones")  # fmt: skip
        methods_now = set(new["by_reference"][0][1]["data"])
        models = [m for m in old["by_reference"][0][1]["data"]
                  if m.startswith("mimnet") and m in methods_now]  # fmt: skip
        if not models:
            raise ValueError(f"{name}: no model label in both {old_path} and {new_path}")
        by_reference = []
        for (ref, before), (_, now) in zip(old["by_reference"], new["by_reference"], strict=True):
            data = {**now["data"], **{BEFORE + m: before["data"][m] for m in models}}
            by_reference.append([ref, {**now, "data": data}])
        record = {**new, "by_reference": by_reference}
        units.append((name, record, f"{old_path} ({old.get('scored_at', '?')})"))
    target = out / "compare"
    groups = []
    for name, record, source in units:
        parts = [Scores.from_state(state, VerifyOptions()) for _, state in record["by_reference"]]
        group = _groups(record, merged(parts))["pooled_minutes"]
        groups.append(group)
        notes = [f"{name}: models scored into {out} (now) against the same labels in {source} "
                 f"(`{BEFORE}`), on the same {len(parts)} reference times at "
                 f"{record['step_minutes']}-min steps"]  # fmt: skip
        _comparison_report(target / name, f"mimcast: {name}, models now and before", [group],
                           notes)  # fmt: skip
    if len(groups) > 1:
        notes = [f"pooled by minutes over {', '.join(u[0] for u in units)}; intervals resample "
                 "the archives, then their reference times"]  # fmt: skip
        _comparison_report(target / "pooled", "mimcast: models now and before, pooled", groups,
                           notes)  # fmt: skip
    return target


def _comparison_report(target: Path, title: str, groups: list, notes: list[str]) -> None:
    """scores.csv, differences.csv (models now minus before), figures and report.md."""
    from mimcast.pipeline.plots import difference_curves, skill_curves
    from mimcast.pipeline.significance import (
        LOWER_IS_BETTER,
        METRICS,
        differences,
        label,
        markdown_section,
        write_differences_csv,
    )
    from mimcast.pipeline.verify import markdown_report, merged, write_scores_csv

    target.mkdir(parents=True, exist_ok=True)
    rows = merged([p for g in groups for p in g.parts]).table()
    write_scores_csv(rows, target / "scores.csv")
    diffs = [r for r in differences(groups) if r["baseline"] == BEFORE + r["method"]]
    write_differences_csv(diffs, target / "differences.csv")
    figures = skill_curves(rows, target) + difference_curves(diffs, target)
    ahead = []
    for model in dict.fromkeys(r["method"] for r in diffs):
        cells = []
        for metric, threshold in METRICS:
            mine = [r["difference"] for r in diffs if (r["method"], r["metric"], r["threshold"])
                    == (model, metric, threshold) and np.isfinite(r["difference"])]  # fmt: skip
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            better = sum(sign * d > 0 for d in mine)
            cells.append(f"{label(metric, threshold)} {better} of {len(mine)}")
        ahead.append(f"- {model}: ahead of {BEFORE}{model} at " + ", ".join(cells) + " leads")
    sections = ["", "## Now against before", "", "Leads where the model now scores better "
                "than before (point values):", "", *ahead,
                *markdown_section(diffs)]  # fmt: skip
    (target / "report.md").write_text(
        markdown_report(
            rows, title=title, notes=notes, images=[p.name for p in figures], sections=sections
        )
    )
