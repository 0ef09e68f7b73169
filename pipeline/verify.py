"""Verification: MIMNet against persistence and optical-flow extrapolation, per lead time.

Contract
--------
- **Scores** per method and lead time, aggregated over many reference times: categorical
  scores (CSI, POD, FAR, HSS, ETS) from contingency tables *summed* over forecasts (pysteps'
  ``det_cat_fct`` accumulators) at reflectivity thresholds (20/30/40 dBZ) and rain-rate
  thresholds (0.5/1/5/10 mm/h); MSE and MAE in dBZ; SSIM (scikit-image, averaged over
  forecasts); FSS at several scales (pysteps' ``fss`` accumulators). The observation's side
  of each score is computed once per lead time for all methods (:meth:`Scores.add_lead`),
  with the same sums as the libraries. Only pixels valid in the observation and in the last
  input frame count; reflectivity is floored at 0 dBZ, so
  "no echo" compares as 0 dBZ.
- **Methods**: any forecasters of the registry (:mod:`mimcast.pipeline.forecasters`), under
  any labels: MIMNet checkpoints, persistence, extrapolation, S-PROG (the MSE-optimal
  benchmark pysteps recommends for networks), ... All are scored on the same pixels.
- **Hindcast** (:func:`hindcast`): every ``every``-th reference time in ``[start, end]`` whose
  inputs and targets are all observed; reference times run in parallel with dask (local
  threads, or a distributed scheduler address).
- :meth:`Scores.table` gives long-form rows ``method, lead_time, metric, threshold, value, n``
  (``n``: forecasts aggregated) for ``scores.csv`` and the Markdown report.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from mimcast.pipeline.compute import TaskBar, dask_scheduler, local_workers
from mimcast.pipeline.cube import VARIABLE, axis_breaks, complete_windows, parse_time
from mimcast.pipeline.cube import observed as cube_observed
from mimcast.pipeline.defaults import FLOOR_DBZ
from mimcast.pipeline.forecasters import pysteps
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, dbz_to_rate

log = logging.getLogger(__name__)

DBZ_THRESHOLDS = (20.0, 30.0, 40.0)
RATE_THRESHOLDS = (0.5, 1.0, 5.0, 10.0)
FSS_SCALES = (1, 5, 11, 21)  # window sizes in pixels
#: Peak memory of one reference time in a hindcast, per pixel of the grid: the shipped model,
#: extrapolation and persistence over 9 leads on OPERA CIRRUS (4400 x 3800) peaked at 8.3 GB
#: in all, about 1 GB of it the process itself; rounded up (2026-12-07)
REFERENCE_BYTES_PER_PIXEL = 600
CATEGORICAL = ("CSI", "POD", "FAR", "HSS", "ETS")
_SUMS = ("se", "ae", "px", "ssim", "ssim_n", "n")  # plain sums in a score slot


@dataclass(frozen=True)
class VerifyOptions:
    """What is scored and how."""

    dbz_thresholds: tuple[float, ...] = DBZ_THRESHOLDS  # categorical thresholds, dBZ
    rate_thresholds: tuple[float, ...] = RATE_THRESHOLDS  # categorical thresholds, mm/h
    fss_scales: tuple[int, ...] = FSS_SCALES  # FSS window sizes, pixels
    fss_threshold_dbz: float = 30.0  # FSS event threshold
    zr: ZR = MARSHALL_PALMER  # for the rain-rate thresholds


# --------------------------------------------------------------------------------------------
# accumulating scores


def _pysteps_verification():
    verification = pysteps().verification
    return verification.detcatscores, verification.spatialscores


def _box(field: np.ndarray, size: int) -> np.ndarray:
    """pysteps' FSS neighbourhood: the mean over ``size`` × ``size`` pixels, zero outside."""
    from scipy.ndimage import uniform_filter

    return field if size == 1 else uniform_filter(field, size=size, mode="constant", cval=0.0)


class _SSIM:
    """scikit-image's ``structural_similarity(observed, forecast, data_range=70.0,
    win_size=win)`` (uniform window, sample covariance), with the observation's local means
    and variances computed once for every forecast compared with it."""

    K1, K2, DATA_RANGE = 0.01, 0.03, 70.0

    def __init__(self, observed: np.ndarray, win: int) -> None:
        self.win, self.pad = win, (win - 1) // 2
        # scikit-image's working precision: float32 for float32 (and float16) images
        self.dtype = np.float32 if observed.dtype in (np.float16, np.float32) else np.float64
        self.x = observed.astype(self.dtype, copy=False)
        self.cov_norm = win**2 / (win**2 - 1)
        self.ux = self._filter(self.x)
        self.vx = self.cov_norm * (self._filter(self.x * self.x) - self.ux * self.ux)
        self.ux2, self.two_ux = self.ux**2, 2 * self.ux

    def _filter(self, a: np.ndarray) -> np.ndarray:
        from scipy.ndimage import uniform_filter

        return uniform_filter(a, size=self.win)

    def score(self, forecast: np.ndarray) -> float:
        # scikit-image's arithmetic, operation for operation, written into fewer temporaries
        y = forecast.astype(self.dtype, copy=False)
        uy = self._filter(y)
        vy = self._filter(y * y)
        vy -= uy * uy
        vy *= self.cov_norm
        vxy = self._filter(self.x * y)
        vxy -= self.ux * uy
        vxy *= self.cov_norm
        c1, c2 = (self.K1 * self.DATA_RANGE) ** 2, (self.K2 * self.DATA_RANGE) ** 2
        a1 = self.two_ux * uy
        a1 += c1
        vxy *= 2
        vxy += c2  # A2
        a1 *= vxy  # A1 A2
        uy *= uy
        b1 = self.ux2 + uy
        b1 += c1
        b2 = self.vx + vy
        b2 += c2
        b1 *= b2  # B1 B2
        a1 /= b1  # S
        p = self.pad
        return float(a1[p : a1.shape[0] - p, p : a1.shape[1] - p].mean(dtype=np.float64))


class _Observed:
    """What scoring needs from one observation on one set of valid pixels."""

    def __init__(self, observed: np.ndarray, valid: np.ndarray, options: VerifyOptions) -> None:
        self.valid = valid
        o = np.where(valid, np.maximum(observed, FLOOR_DBZ), np.nan)
        self.values = o[valid]
        rate = dbz_to_rate(self.values, options.zr)
        self.exceeds = {("dBZ", t): self.values > t for t in options.dbz_thresholds} | {
            ("mm/h", t): rate > t for t in options.rate_thresholds}  # fmt: skip
        self.exceed_counts = {key: np.count_nonzero(e) for key, e in self.exceeds.items()}
        o0 = np.nan_to_num(o, nan=FLOOR_DBZ)
        binary = (o0 >= options.fss_threshold_dbz).astype(float)
        self.fractions = {}
        for scale in options.fss_scales:
            s_o = _box(binary, scale)
            self.fractions[scale] = s_o, np.sum(s_o**2)
        side = min(o.shape)
        win = min(7, side if side % 2 else side - 1)
        self.ssim = _SSIM(o0, win) if win >= 3 else None  # a window of at least 3 x 3


class Scores:
    """Mergeable score accumulators: method -> lead -> tables and sums."""

    def __init__(self, options: VerifyOptions) -> None:
        self.options = options
        self.data: dict[str, dict[int, dict[str, Any]]] = {}

    def _slot(self, method: str, lead: int) -> dict[str, Any]:
        det, spatial = _pysteps_verification()
        opts = self.options
        return self.data.setdefault(method, {}).setdefault(lead, {
            "cat": {("dBZ", t): det.det_cat_fct_init(t) for t in opts.dbz_thresholds}
            | {("mm/h", t): det.det_cat_fct_init(t) for t in opts.rate_thresholds},
            "fss": {s: spatial.fss_init(opts.fss_threshold_dbz, s) for s in opts.fss_scales},
            "se": 0.0, "ae": 0.0, "px": 0, "ssim": 0.0, "ssim_n": 0, "n": 0,
        })  # fmt: skip

    def add(self, method: str, lead: int, forecast: np.ndarray, observed: np.ndarray) -> None:
        """Add one forecast field (dBZ, NaN outside the scored area) and its observation."""
        self.add_lead(lead, {method: forecast}, observed)

    def add_lead(
        self, lead: int, forecasts: Mapping[str, np.ndarray], observed: np.ndarray
    ) -> None:
        """Add each method's forecast field for one lead time, all against one observation.

        The same sums as pysteps' ``det_cat_fct_accum`` and ``fss_accum`` and scikit-image's
        ``structural_similarity`` give (a test compares them), but what depends on the
        observation alone (its exceedances, smoothed fractions, local means and variances) is
        computed once for every method scored on the same pixels, not once per method.
        """
        obs: _Observed | None = None
        for method, forecast in forecasts.items():
            valid = np.isfinite(forecast) & np.isfinite(observed)
            if obs is None or not np.array_equal(valid, obs.valid):
                obs = _Observed(observed, valid, self.options)
            self._add(self._slot(method, lead), forecast, obs)

    def _add(self, slot: dict[str, Any], forecast: np.ndarray, obs: _Observed) -> None:
        f = np.where(obs.valid, np.maximum(forecast, FLOOR_DBZ), np.nan)
        fv = f[obs.valid]  # pysteps would count NaN pixels as correct negatives
        rate = None
        for key, table in slot["cat"].items():
            kind = key[0]
            if kind == "mm/h" and rate is None:
                rate = dbz_to_rate(fv, self.options.zr)
            yes = (fv if kind == "dBZ" else rate) > table["thr"]
            hits = np.count_nonzero(yes & obs.exceeds[key])
            forecast_yes, observed_yes = np.count_nonzero(yes), obs.exceed_counts[key]
            if table["hits"] is None:  # as pysteps starts a table: integer counts
                for count in ("hits", "false_alarms", "misses", "correct_negatives"):
                    table[count] = np.zeros((), dtype=int)
            table["hits"] += hits
            table["false_alarms"] += forecast_yes - hits
            table["misses"] += observed_yes - hits
            table["correct_negatives"] += yes.size - forecast_yes - observed_yes + hits
        f0 = np.nan_to_num(f, nan=FLOOR_DBZ)
        binary = (f0 >= self.options.fss_threshold_dbz).astype(float)
        for scale, fss in slot["fss"].items():
            fraction = _box(binary, scale)
            s_o, sum_obs_sq = obs.fractions[scale]
            fss["sum_obs_sq"] += sum_obs_sq
            # pysteps' nansum, without its copy: fractions of a finite field are never NaN
            fss["sum_fct_obs"] += np.sum(fraction * s_o)
            fss["sum_fct_sq"] += np.sum(fraction**2)
        diff = fv - obs.values
        slot["se"] += float(np.sum(diff * diff))
        slot["ae"] += float(np.sum(np.abs(diff)))
        slot["px"] += int(obs.values.size)
        if obs.ssim is not None:
            slot["ssim"] += obs.ssim.score(f0)
            slot["ssim_n"] += 1
        slot["n"] += 1

    def merge(self, other: Scores) -> Scores:
        """Add ``other``'s accumulators into these (both from the same options)."""
        det, spatial = _pysteps_verification()
        for method, leads in other.data.items():
            for lead, theirs in leads.items():
                mine = self._slot(method, lead)
                if mine["n"] == 0:  # pysteps refuses to merge into an empty accumulator
                    self.data[method][lead] = copy.deepcopy(theirs)
                    continue
                for key in mine["cat"]:
                    mine["cat"][key] = det.det_cat_fct_merge(mine["cat"][key], theirs["cat"][key])
                for key in mine["fss"]:
                    mine["fss"][key] = spatial.fss_merge(mine["fss"][key], theirs["fss"][key])
                for key in _SUMS:
                    mine[key] += theirs[key]
        return self

    def state(self) -> dict[str, Any]:
        """The accumulators as plain JSON data; :meth:`from_state` reads them back.

        Stored scores merge like fresh ones, so hindcasts run apart (one archive per session,
        say) pool exactly as if they had run together.
        """

        def plain(acc: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for key, value in acc.items():
                if isinstance(value, np.ndarray | np.generic):
                    if np.ndim(value):
                        raise ValueError(f"accumulator {key!r} is an array: cannot store it")
                    value = value.item()
                out[key] = value
            return out

        data = {
            method: {
                str(lead): {
                    "cat": [[kind, thr, plain(t)] for (kind, thr), t in slot["cat"].items()],
                    "fss": [[scale, plain(f)] for scale, f in slot["fss"].items()],
                    **{key: slot[key] for key in _SUMS},
                }
                for lead, slot in leads.items()
            }
            for method, leads in self.data.items()
        }
        return {"options": repr(self.options), "data": data}

    @classmethod
    def from_state(cls, state: dict[str, Any], options: VerifyOptions) -> Scores:
        """Scores from :meth:`state`, which must have been made with the same ``options``."""
        if state.get("options") != repr(options):
            raise ValueError(f"scores made with {state.get('options')}, not {options!r}")

        def numpy(acc: dict[str, Any]) -> dict[str, Any]:  # numpy divides 0 by 0 as NaN
            return {key: np.float64(v) if isinstance(v, int | float) else v
                    for key, v in acc.items()}  # fmt: skip

        scores = cls(options)
        for method, leads in state["data"].items():
            for lead, slot in leads.items():
                scores.data.setdefault(method, {})[int(lead)] = {
                    "cat": {(kind, float(thr)): numpy(t) for kind, thr, t in slot["cat"]},
                    "fss": {int(scale): numpy(f) for scale, f in slot["fss"]},
                    **{key: slot[key] for key in _SUMS},
                }
        return scores

    def table(self) -> list[dict[str, Any]]:
        """Return long-form rows: method, lead_time, metric, threshold, value, n."""
        det, spatial = _pysteps_verification()
        rows = []
        for method, leads in self.data.items():
            for lead, slot in sorted(leads.items()):
                n = slot["n"]

                def row(metric, threshold, value, method=method, lead=lead, n=n):
                    return {"method": method, "lead_time": lead, "metric": metric,
                            "threshold": threshold, "value": float(value), "n": n}  # fmt: skip

                for (kind, thr), table in slot["cat"].items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        result = det.det_cat_fct_compute(table, scores=list(CATEGORICAL))
                    for metric in CATEGORICAL:
                        rows.append(row(metric, f"{thr:g} {kind}", result[metric]))
                px = max(slot["px"], 1)
                rows.append(row("MSE", "", slot["se"] / px))
                rows.append(row("MAE", "", slot["ae"] / px))
                ssim = slot["ssim"] / slot["ssim_n"] if slot["ssim_n"] else float("nan")
                rows.append(row("SSIM", "", ssim))
                for scale, fss in slot["fss"].items():
                    value = spatial.fss_compute(fss)
                    rows.append(row("FSS", f"{self.options.fss_threshold_dbz:g} dBZ @ {scale} px",
                                    value))  # fmt: skip
        return rows


# --------------------------------------------------------------------------------------------
# hindcast


def reference_times(
    cube: xr.Dataset,
    n_inputs: int,
    n_leads: int,
    *,
    start: str | None = None,
    end: str | None = None,
    every: int = 1,
) -> list[np.datetime64]:
    """Return reference times whose inputs and targets are all observed, at a stride."""
    if every < 1:
        raise ValueError(f"every={every}: must be >= 1")
    times = cube.time.values
    ok = complete_windows(cube_observed(cube), n_inputs + n_leads, breaks=axis_breaks(cube))
    ok = ok + n_inputs - 1  # reference = last input
    refs = times[ok]
    if start:
        refs = refs[refs >= _iso(start, "start")]
    if end:
        refs = refs[refs <= _iso(end, "end")]
    return list(refs[::every])


def scorable_leads(
    cube: xr.Dataset, n_inputs: int, n_leads: int, **options: Any
) -> tuple[int, list[np.datetime64]]:
    """The most lead steps, at most ``n_leads``, that some reference time can score, and
    those reference times (``options``: those of :func:`reference_times`); ``(0, [])`` when
    not even one lead can be scored."""
    for leads in range(n_leads, 0, -1):
        refs = reference_times(cube, n_inputs, leads, **options)
        if refs:
            return leads, refs
    return 0, []


def _iso(value: str, option: str) -> np.datetime64:
    try:
        return parse_time(value).astype("datetime64[ns]")
    except ValueError as err:
        raise ValueError(f"--{option}: {err}") from None


def score_reference(
    cube: xr.Dataset,
    reference: np.datetime64,
    n_inputs: int,
    n_leads: int,
    step: int,
    forecasters: Mapping[str, Callable[[np.ndarray, int], np.ndarray]],
    options: VerifyOptions,
) -> Scores:
    """Score every forecaster on one reference time; return its accumulators.

    Every method is scored on the same pixels: valid in the observation, in the last input
    frame and in every method's forecast (a pixel one method calls unknown, such as echo
    advected in from outside the grid, counts for none).
    """
    index = int(np.flatnonzero(cube.time.values == reference)[0])
    block = cube[VARIABLE].isel(time=slice(index - n_inputs + 1, index + n_leads + 1)).values
    inputs, observed = block[:n_inputs], block[n_inputs:]
    when = str(np.datetime_as_string(reference, unit="m"))
    forecasts = {}
    for label, fc in forecasters.items():
        start = time.perf_counter()
        forecasts[label] = np.asarray(fc(inputs, n_leads))
        _say_slow(start, "reference %s: %s forecast, %d leads", when, label, n_leads)
    known = np.isfinite(inputs[-1])[None] & np.ones((n_leads, 1, 1), dtype=bool)
    for fc in forecasts.values():
        known &= np.isfinite(fc[:n_leads])
    scores = Scores(options)
    start = time.perf_counter()
    for k in range(n_leads):
        fields = {label: np.where(known[k], fc[k], np.nan) for label, fc in forecasts.items()}
        scores.add_lead((k + 1) * step, fields, observed[k])
    _say_slow(start, "reference %s: %d forecasts scored", when, len(forecasts))
    return scores


def _say_slow(start: float, message: str, *args: Any) -> None:
    """Log a step of a hindcast with its duration: shown (INFO) when it took 20 s or more,
    as on large grids, where one reference time can take minutes; else at DEBUG (-vv)."""
    seconds = time.perf_counter() - start
    log.log(logging.INFO if seconds >= 20 else logging.DEBUG, message + " in %.0f s",
            *args, seconds)  # fmt: skip


def score_references(
    cube: xr.Dataset,
    refs: Sequence[np.datetime64],
    n_inputs: int,
    n_leads: int,
    step: int,
    forecasters: Mapping[str, Callable[[np.ndarray, int], np.ndarray]],
    options: VerifyOptions | None = None,
    *,
    scheduler: str | None = None,
    progress: bool = False,
) -> list[Scores]:
    """Score all reference times in parallel with dask; one :class:`Scores` per reference
    time, in the order of ``refs`` (:mod:`mimcast.pipeline.significance` resamples them).

    ``scheduler``: "threads", "synchronous", "processes", or the address of a running
    distributed scheduler (``tcp://host:8786``); None: ``MIMCAST_DASK_ADDRESS``, else threads.
    """
    import dask

    from mimcast.pipeline.forecasters import for_cube

    options = options or VerifyOptions()
    if not refs:
        raise ValueError("no reference time with complete inputs and targets in the period")
    # every method learns the archive's step (a step-aware model needs it, and a model on a
    # short-step archive reads every k-th frame) and its pixel size (a model runs near its
    # training grid)
    forecasters = {label: for_cube(fc, cube, step) for label, fc in forecasters.items()}
    task = functools.partial(score_reference, cube, n_inputs=n_inputs, n_leads=n_leads,
                             step=step, forecasters=forecasters, options=options)  # fmt: skip
    tasks = [dask.delayed(task)(ref) for ref in refs]
    with dask_scheduler(scheduler) as where, TaskBar("hindcast", progress, "forecast"):
        workers = {}
        if where in ("threads", "processes"):  # as many at once as memory allows
            pixels = cube.sizes["y"] * cube.sizes["x"]
            workers["num_workers"] = local_workers(REFERENCE_BYTES_PER_PIXEL * pixels,
                                                   "reference time")  # fmt: skip
        return list(dask.compute(*tasks, scheduler=where, **workers))


def merged(parts: Sequence[Scores], options: VerifyOptions | None = None) -> Scores:
    """The sum of ``parts``' accumulators (the parts are left as they are)."""
    total = Scores(options or (parts[0].options if parts else VerifyOptions()))
    for part in parts:
        total.merge(part)
    return total


def hindcast(*args: Any, **kwargs: Any) -> Scores:
    """Score all reference times and merge the accumulators: :func:`score_references`, whose
    arguments it takes, pooled into one :class:`Scores`."""
    return merged(score_references(*args, **kwargs))


# --------------------------------------------------------------------------------------------
# reports


def write_scores_csv(rows: list[dict[str, Any]], path) -> None:
    """Write long-form score rows as CSV (method, lead_time, metric, threshold, value, n)."""
    import csv
    from pathlib import Path

    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "lead_time", "metric", "threshold",
                                                "value", "n"])  # fmt: skip
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "value": f"{row['value']:.6g}"})


def markdown_report(rows: list[dict[str, Any]], *, title: str, notes: Sequence[str] = (),
                    images: Sequence[str] = (), sections: Sequence[str] = ()) -> str:  # fmt: skip
    """Return a Markdown report: per-lead tables of the headline scores for every method,
    then ``sections`` (Markdown lines) and the figures."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (not m.startswith("mimnet"), m))
    leads = sorted({r["lead_time"] for r in rows})
    n = max((r["n"] for r in rows), default=0)
    index = {(r["method"], r["lead_time"], r["metric"], r["threshold"]): r["value"] for r in rows}
    lines = [f"# {title}", "", f"{n} forecasts per method and lead time.", ""]
    lines += [f"- {note}" for note in notes]
    headline = [
        ("MSE", "", "MSE (dBZ², lower is better)"),
        ("CSI", "20 dBZ", "CSI ≥ 20 dBZ"),
        ("CSI", "30 dBZ", "CSI ≥ 30 dBZ"),
        ("CSI", "1 mm/h", "CSI ≥ 1 mm/h"),
        ("FSS", "30 dBZ @ 11 px", "FSS ≥ 30 dBZ at 11 px"),
        ("SSIM", "", "SSIM"),
    ]
    for metric, threshold, label in headline:
        if not any(k[2] == metric and k[3] == threshold for k in index):
            continue
        lines += ["", f"## {label}", "", "| lead (min) | " + " | ".join(methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]  # fmt: skip
        for lead in leads:
            cells = []
            for m in methods:
                v = index.get((m, lead, metric, threshold))
                cells.append("" if v is None or not np.isfinite(v) else f"{v:.3f}")
            lines.append(f"| {lead} | " + " | ".join(cells) + " |")
    lines += list(sections)
    if images:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in images]
    lines += ["", "All scores: `scores.csv` (method, lead_time, metric, threshold, value, n)."]
    return "\n".join(lines) + "\n"


def patch_seam_ratio(field: np.ndarray, patch: int) -> float:
    """Mean |neighbour difference| across patch boundaries over that elsewhere (1: no seams).

    ``field`` is ``(..., H, W)`` (NaN ignored); boundaries are between columns (and rows)
    ``k * patch - 1`` and ``k * patch``, where a space-to-depth model's patches meet.
    """
    field = np.asarray(field, dtype=np.float64)
    seams, rest = [], []
    for axis in (-1, -2):
        diff = np.abs(np.diff(field, axis=axis))
        index = np.arange(diff.shape[axis])
        at_seam = (index % patch) == patch - 1
        seams.append(np.compress(at_seam, diff, axis=axis).ravel())
        rest.append(np.compress(~at_seam, diff, axis=axis).ravel())
    seam, other = np.concatenate(seams), np.concatenate(rest)
    return float(np.nanmean(seam) / np.nanmean(other))
