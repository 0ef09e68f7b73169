"""Ingest: radar archives -> one chunked, compressed Zarr cube, with an ingest report.

Contract
--------
:func:`ingest` takes files, directories and globs in any supported format, and writes (or
extends) a Zarr store holding a radar cube (:mod:`pipeline.cube`) plus a boolean ``observed``
variable along ``time``. Beside the store, ``<name>.ingest.json`` reports what happened.

1. *Discover* files (directories recursively, globs), skipping hidden files.
2. *Scan* every file in parallel with dask: read it, take the time from its content, note its
   grid and a SHA-256 of its decoded values. A file that cannot be read (truncated, corrupt,
   missing projection, unknown format), that is all nodata, or whose grid differs from the
   archive's, is listed in the report with the reason and left untouched; everything else is
   ingested.
3. *Order* frames by time; drop exact duplicates (same time, same values) and report
   conflicting ones (same time, different values: the first by path order, or the frame
   already in the cube, is kept).
4. *Gaps*: the time axis is regular (``step_minutes``, inferred from the archive when not
   given). Missing steps become all-NaN frames with ``observed = False``, so nothing
   downstream can build a sequence across one.
5. *Write* in time chunks, streaming: each frame is read again inside the dask graph and
   written chunk by chunk, so peak memory does not grow with the length of the archive.
   A new store is written under a temporary name and renamed when complete. Ingesting the
   same files again changes nothing; newer files extend the time axis; files that fill a gap
   are written into it.

Optional ``crop`` (a bounding box in the grid's metres) and ``coarsen`` (an integer factor,
averaging linear Z) map every frame to a target grid before anything else.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from mimcast.pipeline.atomic import atomic_write_json
from mimcast.pipeline.cube import (
    GRID_MAPPING,
    NO_ECHO_DBZ,
    TIME_ENCODING,
    VARIABLE,
    CubeError,
    open_cube,
)
from mimcast.pipeline.cube import observed as cube_observed
from mimcast.pipeline.readers import ReaderError, read
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR

REPORT_SUFFIX = ".ingest.json"


class IngestError(CubeError):
    """Nothing could be ingested (no input, nothing readable, or an unusable store)."""


@dataclass(frozen=True)
class IngestOptions:
    """How files become a cube."""

    format: str = "auto"  # reader name, or "auto" to detect each file by content
    zr: ZR = MARSHALL_PALMER  # Z-R relation for rain rates and accumulations
    step_minutes: int | None = None  # time step; None infers it from the archive
    crop: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax in metres
    coarsen: int = 1  # block-average factor (linear Z) applied after cropping
    time_chunk: int = 4  # frames per Zarr chunk
    space_chunk: int = 512  # pixels per Zarr chunk side
    batch: int = 8  # files scanned per dask batch (bounds memory in flight)
    scheduler: str = "threads"  # dask scheduler: threads, processes, synchronous


@dataclass
class IngestReport:
    """What one ingest run did; written as JSON beside the cube."""

    cube: str
    started: str
    files_found: int = 0
    read: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    unchanged: int = 0
    new_frames: int = 0
    filled_gaps: int = 0
    gaps: list[str] = field(default_factory=list)
    time_range: list[str] = field(default_factory=list)
    step_minutes: int | None = None

    @property
    def complete(self) -> bool:
        """True when every file found was ingested (or already in the cube)."""
        return not self.skipped and not self.conflicts

    @property
    def status(self) -> str:
        """``complete`` or ``partial``."""
        return "complete" if self.complete else "partial"


# --------------------------------------------------------------------------------------------
# discovery and per-file work


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Return the files named by ``paths`` (files, directories, globs) and the problems."""
    files: list[Path] = []
    problems: list[dict[str, str]] = []
    for item in paths:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            found = [p for p in matches if p.is_file()]
            if not found:
                problems.append({"file": text, "reason": "glob matches no file"})
        else:
            path = Path(text)
            if path.is_dir():
                found = sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
                )
                if not found:
                    problems.append({"file": text, "reason": "empty directory"})
            elif path.is_file():
                found = [path]
            else:
                found = []
                problems.append({"file": text, "reason": "no such file or directory"})
        files.extend(found)
    unique = sorted({p.resolve(): p for p in files}.values(), key=lambda p: str(p))
    return unique, problems


def _coarsen(dbz: np.ndarray, factor: int) -> np.ndarray:
    """Block-average linear Z; a block with more than half NaN becomes NaN."""
    ny, nx = (dbz.shape[0] // factor) * factor, (dbz.shape[1] // factor) * factor
    blocks = dbz[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    z = np.where(blocks <= NO_ECHO_DBZ, 0.0, 10.0 ** (blocks / 10.0))
    valid = np.isfinite(z).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(z, axis=(1, 3)) / np.maximum(valid, 1)
        out = np.where(mean > 0, 10.0 * np.log10(mean), NO_ECHO_DBZ)
    out = np.maximum(out, NO_ECHO_DBZ)
    out[valid * 2 < factor * factor] = np.nan
    return out.astype(np.float32)


def load_frame(path: str | Path, options: IngestOptions) -> xr.Dataset:
    """Read one file and map it to the target grid (crop, coarsen)."""
    ds = read(path, options.format, zr=options.zr)
    if options.crop is not None:
        xmin, ymin, xmax, ymax = options.crop
        ds = ds.sel(x=(ds.x >= xmin) & (ds.x <= xmax), y=(ds.y >= ymin) & (ds.y <= ymax))
        if ds.sizes["x"] == 0 or ds.sizes["y"] == 0:
            raise ReaderError(path, f"crop {options.crop} leaves no pixel of this grid")
    k = options.coarsen
    if k > 1:
        values = _coarsen(ds[VARIABLE].values[0], k)
        ny, nx = values.shape
        x = ds.x.values[: nx * k].reshape(nx, k).mean(axis=1)
        y = ds.y.values[: ny * k].reshape(ny, k).mean(axis=1)
        ds = ds.isel(x=slice(0, nx), y=slice(0, ny)).assign_coords(
            x=("x", x, ds.x.attrs), y=("y", y, ds.y.attrs)
        )
        ds[VARIABLE] = (("time", "y", "x"), values[None], ds[VARIABLE].attrs)
    return ds


def _grid_signature(ds: xr.Dataset) -> dict[str, Any]:
    x, y = ds.x.values, ds.y.values
    return {
        "crs_wkt": ds[GRID_MAPPING].attrs["crs_wkt"],
        "nx": int(x.size),
        "ny": int(y.size),
        "x0": round(float(x[0]), 3),
        "y0": round(float(y[0]), 3),
        "dx": round(float(x[1] - x[0]), 6) if x.size > 1 else 0.0,
        "dy": round(float(y[1] - y[0]), 6) if y.size > 1 else 0.0,
    }


def _same_grid(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("nx", "ny", "x0", "y0", "dx", "dy")
    if any(a[k] != b[k] for k in keys):
        return False
    import pyproj

    return a["crs_wkt"] == b["crs_wkt"] or pyproj.CRS.from_wkt(a["crs_wkt"]) == pyproj.CRS.from_wkt(
        b["crs_wkt"]
    )


def _describe_grid(g: dict[str, Any]) -> str:
    return f"{g['ny']}x{g['nx']} at x0={g['x0']}, y0={g['y0']}, dx={g['dx']}, dy={g['dy']}"


def scan_file(path: str | Path, options: IngestOptions) -> dict[str, Any]:
    """Read one file and return its time, grid, content hash and valid fraction (no data)."""
    try:
        ds = load_frame(path, options)
        values = ds[VARIABLE].values[0]
        finite = np.isfinite(values)
        return {
            "file": str(path),
            "ok": True,
            "time": str(np.datetime64(ds.time.values[0], "s")),
            "grid": _grid_signature(ds),
            "sha256": hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest(),
            "valid_fraction": float(finite.mean()),
        }
    except ReaderError as err:
        return {"file": str(path), "ok": False, "reason": err.problem}
    except CubeError as err:
        return {"file": str(path), "ok": False, "reason": f"not a valid frame: {err}"}
    except ValueError as err:  # e.g. an unknown --format name
        return {"file": str(path), "ok": False, "reason": str(err)}
    except Exception as err:  # one bad file never sinks the archive
        return {"file": str(path), "ok": False, "reason": f"unexpected {type(err).__name__}: {err}"}


def _scan_all(files: Sequence[Path], options: IngestOptions, progress: bool) -> list[dict]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="scan", unit="file")
    results: list[dict] = []
    for start in range(0, len(files), options.batch):
        batch = files[start : start + options.batch]
        tasks = [dask.delayed(scan_file)(p, options) for p in batch]
        results.extend(dask.compute(*tasks, scheduler=options.scheduler))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results


def _load_values(path: str, options: IngestOptions) -> np.ndarray:
    return load_frame(path, options)[VARIABLE].values  # (1, y, x)


# --------------------------------------------------------------------------------------------
# the store


def report_path(store: str | Path) -> Path:
    """Return the path of the ingest report beside ``store``."""
    store = Path(store)
    name = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.with_name(name + REPORT_SUFFIX)


def _infer_step(times: Sequence[np.datetime64]) -> int:
    if len(times) < 2:
        raise IngestError(
            "cannot infer the time step from a single frame; pass step_minutes (--step-minutes)"
        )
    diffs = np.diff(np.array(sorted(times), dtype="datetime64[s]")).astype(np.int64) // 60
    diffs = diffs[diffs > 0]
    return int(Counter(diffs.tolist()).most_common(1)[0][0]) if diffs.size else 0


def _frames_dataset(
    times: np.ndarray,
    sources: list[str | None],
    template: xr.Dataset,
    options: IngestOptions,
) -> xr.Dataset:
    """A lazy dataset of frames at ``times``: files read inside the graph, gaps all-NaN."""
    ny, nx = template.sizes["y"], template.sizes["x"]
    blocks = []
    for src in sources:
        if src is None:
            blocks.append(da.full((1, ny, nx), np.nan, dtype=np.float32, chunks=(1, ny, nx)))
        else:
            delayed = dask.delayed(_load_values)(src, options)
            blocks.append(da.from_delayed(delayed, shape=(1, ny, nx), dtype=np.float32))
    data = da.concatenate(blocks, axis=0).rechunk(
        (options.time_chunk, options.space_chunk, options.space_chunk)
    )
    ds = xr.Dataset(
        {
            VARIABLE: (("time", "y", "x"), data, dict(template[VARIABLE].attrs)),
            "observed": (("time",), np.array([s is not None for s in sources]), {
                "long_name": "frame observed (False: gap filled with NaN)",
            }),
        },
        coords={
            "time": ("time", times.astype("datetime64[ns]"), dict(template.time.attrs)),
            "y": template.y,
            "x": template.x,
            GRID_MAPPING: template[GRID_MAPPING],
        },
    )  # fmt: skip
    return ds


def ingest(
    paths: Iterable[str | Path],
    out: str | Path,
    options: IngestOptions | None = None,
    *,
    progress: bool = False,
    scans: Sequence[dict[str, Any]] | None = None,
) -> IngestReport:
    """Ingest radar files into the Zarr cube ``out`` and return the run's report.

    ``scans``: results of :func:`scan_file` for the discovered files when the caller ran them
    itself (e.g. as Prefect tasks on a Dask cluster); otherwise they run here with dask.

    Raises
    ------
    IngestError
        When no file is found or readable, or ``out`` exists but is not a usable cube.
    """
    options = options or IngestOptions()
    out = Path(out)
    report = IngestReport(cube=str(out), started=datetime.now(UTC).isoformat(timespec="seconds"))
    files, problems = discover(paths)
    report.skipped.extend(problems)
    report.files_found = len(files)
    if not files:
        raise IngestError(
            "no input files: " + "; ".join(f"{p['file']}: {p['reason']}" for p in problems)
        )

    existing = open_cube(out) if out.exists() else None
    # the report's frame registry describes the store only while the store exists
    previous = (
        json.loads(report_path(out).read_text())
        if existing is not None and report_path(out).exists()
        else {}
    )
    known: dict[str, dict[str, str]] = dict(previous.get("frames", {}))

    if scans is None:
        scans = _scan_all(files, options, progress)
    good = [s for s in scans if s["ok"]]
    report.skipped.extend({"file": s["file"], "reason": s["reason"]} for s in scans if not s["ok"])

    # the archive's grid: the cube's, or the most common one among the new files
    if existing is not None:
        template = existing
        grid = _grid_signature(existing)
    elif good:
        counts = Counter(json.dumps(s["grid"], sort_keys=True) for s in good)
        grid = json.loads(counts.most_common(1)[0][0])
        template = None
    else:
        _finish(report, out, known, previous)
        raise IngestError(
            f"none of the {len(files)} files could be read; see {report_path(out)} "
            f"(first problem: {report.skipped[0]['file']}: {report.skipped[0]['reason']})"
        )

    candidates = []
    for s in good:
        if not _same_grid(s["grid"], grid):
            report.skipped.append({
                "file": s["file"],
                "reason": f"grid {_describe_grid(s['grid'])} differs from the archive's "
                f"{_describe_grid(grid)}",
            })  # fmt: skip
        elif s["valid_fraction"] == 0.0:
            report.skipped.append({"file": s["file"], "reason": "all nodata (no valid pixel)"})
        else:
            candidates.append(s)

    # duplicates and conflicts, against each other and against the cube
    by_time: dict[str, dict] = {}
    for s in sorted(candidates, key=lambda s: (s["time"], s["file"])):
        prior = by_time.get(s["time"]) or (
            {"file": known[s["time"]]["file"], "sha256": known[s["time"]]["sha256"], "cube": True}
            if s["time"] in known
            else None
        )
        if prior is None:
            by_time[s["time"]] = s
        elif prior["sha256"] == s["sha256"]:
            if prior.get("cube"):
                report.unchanged += 1
            else:
                report.duplicates.append(
                    {"file": s["file"], "time": s["time"], "duplicate_of": prior["file"]}
                )
        else:
            report.conflicts.append({
                "file": s["file"], "time": s["time"], "kept": prior["file"],
                "reason": "same time, different data",
            })  # fmt: skip
    new = by_time

    # the time axis
    existing_times = (
        [np.datetime64(t, "s") for t in existing.time.values] if existing is not None else []
    )
    step = options.step_minutes or previous.get("step_minutes")
    all_times = existing_times + [np.datetime64(t, "s") for t in new]
    if not step:
        step = _infer_step(all_times) if len(all_times) > 1 else 0
    report.step_minutes = int(step) if step else None
    for t, s in list(new.items()):
        origin = existing_times[0] if existing_times else min(np.datetime64(k, "s") for k in new)
        offset = (np.datetime64(t, "s") - origin).astype(np.int64)
        if step and offset % (60 * step) != 0:
            reason = f"time {t} is not on the {step}-minute grid of the archive"
            report.skipped.append({"file": s["file"], "reason": reason})
            del new[t]
    if existing is not None and new:
        first_new = min(np.datetime64(t, "s") for t in new)
        if first_new < existing_times[0]:
            _finish(report, out, known, previous)
            raise IngestError(
                f"{out}: new frames start at {first_new}, before the cube's first frame "
                f"{existing_times[0]}; ingest into a new cube instead"
            )

    if existing is None and not new:
        _finish(report, out, known, previous)
        raise IngestError(f"nothing to ingest into {out}: every file was skipped (see report)")
    if new:
        _write(out, existing, template, new, grid, step, options, report, progress)
    for t, s in new.items():
        known[t] = {"file": s["file"], "sha256": s["sha256"]}
    report.read = [{"file": s["file"], "time": t} for t, s in sorted(new.items())]
    _finish(report, out, known, previous)
    return report


def _write(out, existing, template, new, grid, step, options, report, progress) -> None:
    new_times = sorted(np.datetime64(t, "s") for t in new)
    step_td = np.timedelta64(int(step or 1), "m")
    if existing is None:
        start, end = new_times[0], new_times[-1]
    else:
        start = np.datetime64(existing.time.values[0], "s")
        end = max(np.datetime64(existing.time.values[-1], "s"), new_times[-1])
    axis = np.arange(start, end + step_td, step_td) if step else np.array(new_times)
    index = {str(t): i for i, t in enumerate(axis)}
    sources: list[str | None] = [None] * len(axis)
    for t, s in new.items():
        sources[index[t]] = s["file"]

    if template is None:
        template = load_frame(next(iter(new.values()))["file"], options)
    ds = _frames_dataset(axis, sources, template, options)
    ds.attrs.update({
        "Conventions": "CF-1.8",
        "title": "radar reflectivity cube",
        "source": "mimcast ingest",
        "time_step_minutes": int(step or 0),
    })  # fmt: skip
    ds.time.attrs.update({"standard_name": "time", "axis": "T"})

    progress_ctx = _progress(progress)
    with progress_ctx, dask.config.set(scheduler=options.scheduler):
        if existing is None:
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            encoding = {
                VARIABLE: {
                    "chunks": (options.time_chunk, options.space_chunk, options.space_chunk),
                },
                "time": dict(TIME_ENCODING),
            }
            try:
                ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False)
                os.replace(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            report.new_frames = sum(s is not None for s in sources)
        else:
            n_old = existing.sizes["time"]
            fills = [i for i in range(n_old) if sources[i] is not None]
            for i in fills:
                part = ds.isel(time=slice(i, i + 1)).drop_vars([GRID_MAPPING, "x", "y"])
                for name in part.variables:
                    part[name].encoding = {}
                # one region at a time, sequentially: a partial Zarr chunk is safe to rewrite
                part.chunk({"time": 1}).to_zarr(
                    out, region={"time": slice(i, i + 1)}, consolidated=False, safe_chunks=False
                )
            report.filled_gaps = len(fills)
            if len(axis) > n_old:
                tail = ds.isel(time=slice(n_old, None)).drop_vars([GRID_MAPPING, "x", "y"])
                for name in tail.variables:
                    tail[name].encoding = {}
                tail.to_zarr(out, append_dim="time", consolidated=False)
                report.new_frames = sum(s is not None for s in sources[n_old:])


def _progress(enabled: bool):
    if enabled:
        from dask.diagnostics import ProgressBar

        return ProgressBar(minimum=1.0, dt=0.5)
    from contextlib import nullcontext

    return nullcontext()


def _finish(report: IngestReport, out: Path, known: dict, previous: dict) -> None:
    """Update gaps and time range from the store, and write the cumulative report."""
    if out.exists():
        cube = xr.open_zarr(out, consolidated=False)
        times = cube.time.values
        observed = cube_observed(cube)
        report.gaps = [str(np.datetime64(t, "s")) for t, o in zip(times, observed, strict=True)
                       if not o]  # fmt: skip
        report.time_range = [str(np.datetime64(times[0], "s")), str(np.datetime64(times[-1], "s"))]
        if not report.step_minutes:
            report.step_minutes = cube.attrs.get("time_step_minutes") or None
    run = asdict(report)
    run["status"] = report.status
    payload = {
        "cube": str(out),
        "status": report.status,
        "step_minutes": report.step_minutes or previous.get("step_minutes"),
        "time_range": report.time_range,
        "gaps": report.gaps,
        "last_run": run,
        "runs": [*previous.get("runs", []), {k: run[k] for k in _RUN_SUMMARY}],
        "frames": dict(sorted(known.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report_path(out), payload)


_RUN_SUMMARY = (
    "started", "status", "files_found", "new_frames", "filled_gaps", "unchanged", "skipped",
    "duplicates", "conflicts",
)  # fmt: skip
