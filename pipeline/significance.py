"""Is a difference in skill real? Confidence intervals from resampled reference times.

A hindcast's score is a sum over forecasts, and every method is scored on the same reference
times and pixels, so two methods are *paired*. The interval of a difference (model minus
baseline, per lead and score) comes from a paired bootstrap of the reference times:

- Both methods take the same resampled reference times, so weather that is easy or hard for
  every method cancels out of the difference.
- Reference times whose forecasts verify on overlapping frames are not independent. They are
  drawn in circular moving blocks of as many consecutive reference times as one forecast's
  horizon spans (:func:`block_length`).
- Pooled over several archives (leave-one-archive-out), the archives are resampled first and
  then the reference times within each. The interval then also says how much the pooled
  result depends on which archives happened to be scored, which is what a user of another
  archive needs to know.

Intervals are percentile intervals (95 % by default) of ``n`` resamples from a fixed seed:
the same scores always give the same intervals. A difference is called ``better`` or
``worse`` only where its interval excludes zero; ``undecided`` otherwise. With fewer than
:data:`MIN_UNITS` independent units (archives, or blocks of reference times within one
archive) no interval is given: ``too few``.

Scores resampled: CSI at any threshold of the scores (``"20 dBZ"``, ``"1 mm/h"``), MSE, MAE
and FSS at any scale of the scores (``"30 dBZ @ 11 px"``): each is a function of sums that
add over forecasts, as the pooled tables are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mimcast.pipeline.verify import Scores, _pysteps_verification

METRICS = (("CSI", "20 dBZ"), ("CSI", "30 dBZ"), ("MSE", ""), ("FSS", "30 dBZ @ 11 px"))
LOWER_IS_BETTER = frozenset({"MSE", "MAE"})
MIN_UNITS = 4  # independent archives or blocks below which no interval is given
VERDICTS = ("better", "worse", "undecided", "too few")
FIELDS = ("method", "baseline", "lead_time", "metric", "threshold", "difference", "ci_low",
          "ci_high", "verdict", "units", "archives")  # fmt: skip


@dataclass(frozen=True)
class Resampling:
    """How intervals are drawn."""

    n: int = 2000  # resamples
    level: float = 0.95  # central interval
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 100:
            raise ValueError(f"Resampling.n={self.n}: at least 100 resamples")
        if not 0 < self.level < 1:
            raise ValueError(f"Resampling.level={self.level}: must be in (0, 1)")


@dataclass(frozen=True)
class Group:
    """One archive's reference times: their scores in time order and the block length."""

    parts: tuple[Scores, ...]
    block: int = 1

    @property
    def units(self) -> int:
        """Independent blocks of reference times."""
        return max(len(self.parts) // max(self.block, 1), 1 if self.parts else 0)


def block_length(refs: Sequence[Any], horizon_minutes: float) -> int:
    """Consecutive reference times whose forecasts overlap: ``ceil(horizon / spacing)`` with the
    median spacing of ``refs`` (1 for a single reference time or spacings of a horizon or more).
    """
    if len(refs) < 2:
        return 1
    stamps = np.sort(np.asarray(refs, dtype="datetime64[m]")).astype(np.int64)
    spacing = float(np.median(np.diff(stamps)))
    if spacing <= 0:
        return len(refs)
    return int(min(len(refs), max(1, math.ceil(horizon_minutes / spacing - 1e-9))))


# --------------------------------------------------------------------------------------------
# sufficient statistics: every score here is a function of sums over forecasts


def _parse(metric: str, threshold: str) -> tuple[str, Any]:
    if metric == "CSI":
        value, unit = threshold.split()
        return "cat", (unit, float(value))
    if metric == "FSS":
        return "fss", int(threshold.split("@")[1].split()[0])
    if metric in ("MSE", "MAE"):
        return metric, None
    raise ValueError(f"{metric}: no interval for this score (CSI, FSS, MSE, MAE)")


def _stats(slot: dict[str, Any] | None, metric: str, threshold: str) -> np.ndarray:
    kind, key = _parse(metric, threshold)
    if slot is None:  # this reference time has no forecast at this lead
        return np.zeros(3 if kind in ("cat", "fss") else 2)
    if kind == "cat":
        t = slot["cat"][key]
        return np.array([t["hits"], t["misses"], t["false_alarms"]], dtype=np.float64)
    if kind == "fss":
        f = slot["fss"][key]
        return np.array([f["sum_fct_sq"], f["sum_fct_obs"], f["sum_obs_sq"]], dtype=np.float64)
    return np.array([slot["se" if kind == "MSE" else "ae"], slot["px"]], dtype=np.float64)


def _score(sums: np.ndarray, metric: str) -> np.ndarray:
    """The score from summed statistics ``(..., k)``; NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "CSI":
            h, m, f = np.moveaxis(sums, -1, 0)
            return h / (h + m + f)
        if metric == "FSS":  # pysteps' own formula, on arrays of its accumulator's sums
            ff, fo, oo = np.moveaxis(sums, -1, 0)
            fss = {"sum_fct_sq": ff, "sum_fct_obs": fo, "sum_obs_sq": oo}
            return _pysteps_verification()[1].fss_compute(fss)
        total, px = np.moveaxis(sums, -1, 0)
        return total / px


# --------------------------------------------------------------------------------------------
# resampling weights: how often each reference time is drawn in each resample


def _block_counts(n: int, block: int, draws: tuple[int, ...], rng) -> np.ndarray:
    """Counts ``(*draws, n)`` of a circular moving-block bootstrap of ``n`` reference times."""
    block = min(max(block, 1), n)
    blocks = math.ceil(n / block)
    starts = rng.integers(0, n, size=(*draws, blocks))
    index = (starts[..., None] + np.arange(block)) % n  # (*draws, blocks, block)
    index = index.reshape(*draws, blocks * block)[..., :n]
    counts = np.zeros((math.prod(draws), n))
    rows = np.repeat(np.arange(math.prod(draws)), n)
    np.add.at(counts, (rows, index.reshape(-1)), 1.0)
    return counts.reshape(*draws, n)


def resample_weights(groups: Sequence[Group], n: int, rng) -> np.ndarray:
    """Weights ``(n, total reference times)``: with several groups, groups are drawn with
    replacement and each draw resamples its reference times; with one, only the latter."""
    sizes = [len(g.parts) for g in groups]
    if len(groups) == 1:
        return _block_counts(sizes[0], groups[0].block, (n,), rng)
    picks = rng.integers(0, len(groups), size=(n, len(groups)))
    weights = []
    for g, group in enumerate(groups):
        inner = _block_counts(sizes[g], group.block, (n, len(groups)), rng)  # one per draw
        weights.append(np.einsum("rd,rdk->rk", (picks == g).astype(np.float64), inner))
    return np.concatenate(weights, axis=1)


# --------------------------------------------------------------------------------------------
# differences


def pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(model, baseline) pairs: every ``mimnet*`` label against every other label; without a
    model label, every method against persistence."""
    models = [m for m in methods if m.startswith("mimnet")]
    if models:
        return [(m, b) for m in models for b in methods if not b.startswith("mimnet")]
    return [(m, "persistence") for m in methods if m != "persistence" and
            "persistence" in methods]  # fmt: skip


def differences(
    groups: Sequence[Group],
    *,
    metrics: Sequence[tuple[str, str]] = METRICS,
    resampling: Resampling = Resampling(),
) -> list[dict[str, Any]]:
    """Rows (:data:`FIELDS`) of model-minus-baseline differences with their intervals.

    ``groups``: one per archive, each its reference times' scores. Methods are those scored
    at every reference time; leads those any reference time has (a reference time without a
    lead adds nothing to it). ``archives``: the groups that have the lead; ``units``: the
    independent units resampled, those archives, or where one archive alone has the lead,
    its blocks of reference times.
    """
    groups = [g for g in groups if g.parts]
    if not groups:
        return []
    parts = [p for g in groups for p in g.parts]
    methods = sorted(set.intersection(*(set(p.data) for p in parts)),
                     key=lambda m: (not m.startswith("mimnet"), m))  # fmt: skip
    if not pairs(methods):
        return []
    tail = (1 - resampling.level) / 2 * 100
    rows = []
    for lead in sorted({lead for p in parts for leads in p.data.values() for lead in leads}):
        present = [g for g in groups
                   if any(lead in p.data[m] for p in g.parts for m in methods)]  # fmt: skip
        units = len(present) if len(present) > 1 else present[0].units
        rng = np.random.default_rng([resampling.seed, int(lead)])
        weights = resample_weights(present, resampling.n, rng) if units >= MIN_UNITS else None
        scored = [p for g in present for p in g.parts]
        for model, base in pairs(methods):
            for metric, threshold in metrics:
                a = np.stack([_stats(p.data[model].get(lead), metric, threshold) for p in scored])
                b = np.stack([_stats(p.data[base].get(lead), metric, threshold) for p in scored])
                point = float(_score(a.sum(0), metric) - _score(b.sum(0), metric))
                low = high = float("nan")
                verdict = "too few"
                if weights is not None and np.isfinite(point):
                    boot = _score(weights @ a, metric) - _score(weights @ b, metric)
                    # a resample of only reference times without the event has no CSI or
                    # FSS; where that is common, the event is too rare here for an interval
                    if np.mean(np.isfinite(boot)) >= 0.9:
                        bounds = np.nanpercentile(boot, [tail, 100 - tail])
                        low, high = float(bounds[0]), float(bounds[1])
                        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
                        lo, hi = sorted((sign * low, sign * high))
                        verdict = "better" if lo > 0 else "worse" if hi < 0 else "undecided"
                rows.append({"method": model, "baseline": base, "lead_time": lead,
                             "metric": metric, "threshold": threshold, "difference": point,
                             "ci_low": low, "ci_high": high, "verdict": verdict,
                             "units": units, "archives": len(present)})  # fmt: skip
    return rows


def write_differences_csv(rows: list[dict[str, Any]], path) -> None:
    """Write difference rows as CSV (:data:`FIELDS`)."""
    import csv
    from pathlib import Path

    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **{k: f"{row[k]:.6g}" for k in ("difference", "ci_low",
                                                                    "ci_high")}})  # fmt: skip


def read_differences_csv(path) -> list[dict[str, Any]]:
    """Difference rows from :func:`write_differences_csv`, with numbers as numbers."""
    import csv
    from pathlib import Path

    with Path(path).open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row.update({k: float(row[k]) for k in ("difference", "ci_low", "ci_high")})
        row.update({k: int(row[k]) for k in ("lead_time", "units", "archives")})
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return row["method"], row["baseline"], row["metric"], row["threshold"]


def label(metric: str, threshold: str) -> str:
    """A score's name in tables: ``CSI ≥ 20 dBZ``, ``MSE``."""
    return f"{metric} ≥ {threshold}" if threshold else metric


def verdict_counts(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[int]]:
    """(model, baseline, metric, threshold) -> leads per verdict, in the order of
    :data:`VERDICTS`; keys in the order the rows first name them."""
    counts: dict[tuple[str, str, str, str], list[int]] = {}
    for row in rows:
        counts.setdefault(_key(row), [0] * len(VERDICTS))[VERDICTS.index(row["verdict"])] += 1
    return counts


def cell(row: dict[str, Any] | None) -> str:
    """A difference, its interval where there is one, and its verdict ("" without a value)."""
    if row is None or not np.isfinite(row["difference"]):
        return ""
    digits = 2 if row["metric"] in LOWER_IS_BETTER else 3
    text = f"{row['difference']:+.{digits}f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
    return f"{text} {row['verdict']}"


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (model, baseline): leads better / worse / undecided / too few per score."""
    lines: dict[tuple[str, str], list[str]] = {}
    for (model, base, metric, threshold), counts in verdict_counts(rows).items():
        text = f"{label(metric, threshold)} " + "/".join(map(str, counts))
        lines.setdefault((model, base), []).append(text)
    return [f"{model} vs {base}, leads better/worse/undecided/too few: " + ", ".join(cells)
            for (model, base), cells in lines.items()]  # fmt: skip


def markdown_section(rows: list[dict[str, Any]], resampling: Resampling = Resampling(),
                     lead_label: str = "lead (min)") -> list[str]:  # fmt: skip
    """Report lines: verdict counts per pair and score, then each pair's differences."""
    if not rows:
        return []
    level = f"{resampling.level * 100:g} %"
    lines = ["", f"## Is the difference real? ({level} intervals, resampled reference times)",
             "", "Model minus baseline on the same reference times and pixels. A difference is "
             "`better` or `worse` only where its interval excludes zero; `too few`: under "
             f"{MIN_UNITS} independent archives or blocks of reference times, no interval. "
             "Lower MSE is better. All rows: `differences.csv`.", "",
             "| model | baseline | score | better | worse | undecided | too few |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (model, base, metric, threshold), counts in verdict_counts(rows).items():
        lines.append(f"| {model} | {base} | {label(metric, threshold)} | "
                     + " | ".join(map(str, counts)) + " |")  # fmt: skip
    scores = list(dict.fromkeys((r["metric"], r["threshold"]) for r in rows))
    for model, base in dict.fromkeys((r["method"], r["baseline"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["baseline"]) == (model, base)]
        index = {(r["lead_time"], r["metric"], r["threshold"]): r for r in mine}
        lines += ["", f"### {model} minus {base}", "",
                  f"| {lead_label} | " + " | ".join(label(*s) for s in scores) + " |",
                  "|---" * (len(scores) + 1) + "|"]  # fmt: skip
        for lead in sorted({r["lead_time"] for r in mine}):
            cells = [cell(index.get((lead, *score))) for score in scores]
            lines.append(f"| {lead} | " + " | ".join(cells) + " |")
    return lines
