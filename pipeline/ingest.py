"""Ingest: radar archives -> one chunked, compressed Zarr cube, with an ingest report.

Contract
--------
:func:`ingest` takes files, directories and globs in any supported format, and writes (or
extends) a Zarr store holding a radar cube (:mod:`pipeline.cube`) plus a boolean ``observed``
variable along ``time``. Beside the store, ``<name>.ingest.json`` reports what happened.

1. *Discover* files (directories recursively, globs), skipping hidden files. Well-known
   sidecars (GDAL's ``.aux.xml``, checksums, READMEs; :data:`SIDECARS`) are listed as
   ignored; FIFOs, sockets and broken symbolic links are reported as skipped.
2. *Scan* every file in parallel with dask: read it, take the time from its content, note its
   grid and a SHA-256 of its decoded values. A file that cannot be read (truncated, corrupt,
   oversized, missing projection, implausible time, unknown format), that is all nodata, or
   whose grid differs from the archive's, is listed in the report with the reason and left
   untouched; everything else is ingested.
3. *Order* frames by time; drop exact duplicates (same time, same values) and report
   conflicting ones (same time, different values: the first by path order, or the frame
   already in the cube, is kept).
4. *Gaps*: the time axis holds the observed frames at ``step_minutes`` (inferred from the
   archive when not given). A ``step_minutes`` that is a multiple of the archive's own step
   thins it: the frames between are reported as ``thinned``, not as skipped. A gap of up
   to ``max_gap_minutes`` becomes all-NaN frames with ``observed = False``; a longer one (an
   event archive, a long outage) is a *break*: the axis jumps, nothing is written for it,
   and no window is cut across it (:func:`pipeline.cube.complete_windows`). Cost follows the
   frames, not the time span.
5. *Write* in time chunks, streaming: each frame is read again inside the dask graph and
   written chunk by chunk, so peak memory does not grow with the length of the archive.

Safety
------
- One writer at a time: ingest holds a lock beside the store (``.NAME.zarr.lock``, with
  ``filelock``); a second ingest waits up to ``wait_s`` seconds, then fails naming the holder.
- A new store is written under a temporary name and renamed when complete; temporaries of
  killed runs are removed by the next run.
- An append is all-or-nothing as a reader sees it: the store's ``mimcast_frames`` attribute
  counts the committed frames and is updated last, with ``mimcast_pending`` set while a write
  is under way. :func:`pipeline.cube.open_cube` shows only committed frames and warns when a
  write was interrupted; the next ingest truncates the store to them and carries on.

Ingesting the same files again changes nothing; newer files extend the time axis; files
that fill a gap are written into it.

Optional ``crop`` (a bounding box in the grid's metres) and ``coarsen`` (an integer factor,
averaging linear Z) map every frame to a target grid before anything else.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import itertools
import json
import logging
import os
import socket
import stat
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import filelock
import numpy as np
import xarray as xr

from mimcast.pipeline.atomic import atomic_path, atomic_write_json, remove_stale_temporaries
from mimcast.pipeline.compute import TaskBar, check_scheduler, dask_scheduler
from mimcast.pipeline.cube import (
    COMMITTED_ATTR,
    GRID_MAPPING,
    PENDING_ATTR,
    TIME_ENCODING,
    VARIABLE,
    CubeError,
    axis_breaks,
    is_consolidated,
    lock_path,
    open_cube,
    store_state,
)
from mimcast.pipeline.cube import observed as cube_observed
from mimcast.pipeline.defaults import INGEST_WAIT_S, MAX_GAP_MINUTES
from mimcast.pipeline.readers import ReaderError, read
from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, coarsen_dbz

REPORT_SUFFIX = ".ingest.json"
log = logging.getLogger("mimcast")


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
    scheduler: str | None = None  # threads, processes, synchronous, tcp://HOST:PORT; None:
    # MIMCAST_DASK_ADDRESS, else threads (see pipeline.compute)
    max_gap_minutes: int = MAX_GAP_MINUTES  # longer gaps: breaks in the axis, not NaN frames
    cache_mb: int = 256  # decoded frames kept (compressed) from scan to write: read once
    wait_s: float = INGEST_WAIT_S  # how long to wait for another ingest into the same cube

    def __post_init__(self) -> None:
        for name in ("coarsen", "time_chunk", "space_chunk", "batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.step_minutes is not None and self.step_minutes < 1:
            raise ValueError(f"step_minutes={self.step_minutes}: must be >= 1 (minutes)")
        check_scheduler(self.scheduler)
        if self.max_gap_minutes < 0 or self.wait_s < 0:
            raise ValueError("max_gap_minutes and wait_s must be >= 0")
        if self.crop is not None:
            xmin, ymin, xmax, ymax = self.crop
            if not (xmin < xmax and ymin < ymax):
                raise ValueError(f"crop {self.crop}: expected XMIN < XMAX and YMIN < YMAX")


@dataclass
class IngestReport:
    """What one ingest run did; written as JSON beside the cube."""

    cube: str
    started: str
    files_found: int = 0
    read: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    thinned: list[dict[str, str]] = field(default_factory=list)  # between the asked step's times
    ignored: list[str] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    unchanged: int = 0
    new_frames: int = 0
    filled_gaps: int = 0
    gaps: list[str] = field(default_factory=list)
    breaks: list[list[str]] = field(default_factory=list)
    repaired: str | None = None
    time_range: list[str] = field(default_factory=list)
    step_minutes: int | None = None
    thinned_from_minutes: int | None = None  # the archive's own step, when thinned

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


#: Sidecar files that archives and GIS tools leave beside radar files: listed as ignored when
#: met in a directory or a glob (a file named on the command line is always read).
SIDECARS = (
    "*.aux.xml", "*.ovr", "*.md5", "*.sha1", "*.sha256", "*.sha512", "*SUMS", "*.sums",
    "*.asc.sig", "*.sig", "README*", "readme*", "LICENSE*", "*.md", "*.txt", "*.json",
    "Thumbs.db", "desktop.ini",
)  # fmt: skip


def is_sidecar(name: str) -> bool:
    """Return whether a file name is a well-known sidecar (:data:`SIDECARS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SIDECARS)


def _walk(paths: list[Path], ignored: list[str], problems: list[dict[str, str]]) -> list[Path]:
    """Keep the regular files among ``paths``; report special files, skip sidecars."""
    found = []
    for p in paths:
        if p.name.startswith("."):
            continue
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            if p.is_symlink():
                problems.append({"file": str(p), "reason": "broken symbolic link"})
            continue
        except OSError as err:
            problems.append({"file": str(p), "reason": f"cannot stat ({err.strerror})"})
            continue
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
            problems.append({"file": str(p), "reason": f"not a regular file ({kind})"})
        elif is_sidecar(p.name):
            ignored.append(str(p))
        else:
            found.append(p)
    return found


def discover(
    paths: Iterable[str | Path], ignored: list[str] | None = None
) -> tuple[list[Path], list[dict[str, str]]]:
    """Return the files named by ``paths`` (files, directories, globs) and the problems.

    Sidecars met in directories and globs are appended to ``ignored`` when given.
    """
    files: list[Path] = []
    problems: list[dict[str, str]] = []
    ignored = [] if ignored is None else ignored
    for item in paths:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            found = _walk(matches, ignored, problems)
            if not matches:
                problems.append({"file": text, "reason": "glob matches no file"})
        else:
            path = Path(text)
            if path.is_dir():
                entries = sorted(path.rglob("*"))
                found = _walk(entries, ignored, problems)
                if not entries:
                    problems.append({"file": text, "reason": "empty directory"})
            elif path.is_file():
                found = [path]
            elif path.is_symlink():
                found = []
                problems.append({"file": text, "reason": "broken symbolic link"})
            elif path.exists():
                found = []
                problems.append({"file": text, "reason": "not a regular file"})
            else:
                found = []
                problems.append({"file": text, "reason": "no such file or directory"})
        files.extend(found)
    unique = sorted({p.resolve(): p for p in files}.values(), key=lambda p: str(p))
    return unique, problems


def load_frame(path: str | Path, options: IngestOptions) -> xr.Dataset:
    """Read one file and map it to the target grid (crop, coarsen)."""
    ds = read(path, options.format, zr=options.zr)
    if options.crop is not None:
        xmin, ymin, xmax, ymax = options.crop
        ds = ds.sel(x=(ds.x >= xmin) & (ds.x <= xmax), y=(ds.y >= ymin) & (ds.y <= ymax))
        if ds.sizes["x"] == 0 or ds.sizes["y"] == 0:
            raise ReaderError(path, f"crop {options.crop} leaves no pixel of this grid")
    k = options.coarsen
    if k > min(ds.sizes["y"], ds.sizes["x"]):
        raise ReaderError(
            path, f"coarsen factor {k} is larger than the grid {ds.sizes['y']}x{ds.sizes['x']}"
        )
    if k > 1:
        values = coarsen_dbz(ds[VARIABLE].values[0], k)
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


class FrameCache:
    """Decoded frames kept between the scan and the write, so that each file is read once.

    Frames are stored Blosc-LZ4 compressed (radar frames are mostly no-echo or no-data) up to
    ``IngestOptions.cache_mb``; beyond it a frame is not stored and the write decodes its file
    again, so memory stays flat however long the archive. The first frames scanned are the
    ones kept: the write goes through the frames in time order, which is the scan's order for
    the usual time-stamped file names. A frame is dropped once written. Keys include the file's
    size and modification time, so a file changed in between is read again.
    """

    def __init__(self) -> None:
        self._frames: dict[tuple, tuple[bytes, tuple[int, ...]]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str | Path, options: IngestOptions) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (str(path), st.st_mtime_ns, st.st_size, options)

    def put(self, path: str | Path, options: IngestOptions, values: np.ndarray) -> None:
        key = self.key(path, options)
        if key is None or options.cache_mb <= 0:
            return
        from numcodecs import Blosc

        blob = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE).encode(
            np.ascontiguousarray(values, dtype=np.float32)
        )
        with self._lock:
            if key not in self._frames and self._bytes + len(blob) <= options.cache_mb * 2**20:
                self._frames[key] = (blob, values.shape)
                self._bytes += len(blob)

    def pop(self, path: str | Path, options: IngestOptions) -> np.ndarray | None:
        key = self.key(path, options)
        with self._lock:
            entry = self._frames.pop(key, None) if key is not None else None
            if entry is not None:
                self._bytes -= len(entry[0])
        if entry is None:
            return None
        from numcodecs import Blosc

        blob, shape = entry
        return np.frombuffer(Blosc().decode(blob), dtype=np.float32).reshape(shape)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0


#: The process's frame cache (a Dask worker has its own; a miss only costs a decode).
FRAMES = FrameCache()


def scan_file(path: str | Path, options: IngestOptions) -> dict[str, Any]:
    """Read one file and return its time, grid, content hash and valid fraction (no data).

    The decoded frame stays in :data:`FRAMES` for the write, within ``options.cache_mb``.
    """
    try:
        ds = load_frame(path, options)
        values = ds[VARIABLE].values[0]
        finite = np.isfinite(values)
        if finite.any():
            FRAMES.put(path, options, values)
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


def _scan_all(
    files: Sequence[Path], options: IngestOptions, progress: bool, where: Any = "threads"
) -> list[dict]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="scan", unit="file")
    results: list[dict] = []
    for start in range(0, len(files), options.batch):
        batch = files[start : start + options.batch]
        tasks = [dask.delayed(scan_file)(p, options) for p in batch]
        results.extend(dask.compute(*tasks, scheduler=where))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results


def _load_values(path: str, options: IngestOptions) -> np.ndarray:
    cached = FRAMES.pop(path, options)
    if cached is not None:
        return cached[None]  # (1, y, x)
    return load_frame(path, options)[VARIABLE].values  # (1, y, x)


# --------------------------------------------------------------------------------------------
# the store


def report_path(store: str | Path) -> Path:
    """Return the path of the ingest report beside ``store``."""
    store = Path(store)
    name = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.with_name(name + REPORT_SUFFIX)


class CubeBusyError(IngestError):
    """Another process holds the cube's writer lock."""


def _writer(**more: str) -> dict[str, Any]:
    """Who writes, as the lock's holder file and the store's pending marker record it."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"), **more}  # fmt: skip


@contextmanager
def writer_lock(store: str | Path, wait_s: float) -> Iterator[None]:
    """Hold the cube's cross-process writer lock; wait up to ``wait_s`` seconds for it.

    The lock is a ``filelock`` on ``.NAME.zarr.lock``; the holder (PID, host, command, start)
    is written into ``.NAME.zarr.lock.json`` so that a waiter that gives up can name it. The
    operating system releases the lock when its holder dies, even by ``kill -9``.
    """
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder_file = path.with_name(path.name + ".json")
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=wait_s)
    except filelock.Timeout:
        try:
            holder = json.loads(holder_file.read_text())
            who = (f"PID {holder['pid']} on {holder['host']} ({holder['command']}), "
                   f"writing since {holder['started']}")  # fmt: skip
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise CubeBusyError(
            f"{store}: another ingest is writing this cube: {who}; waited {wait_s:g} s "
            "(--wait SECONDS waits longer)"
        ) from None
    try:
        atomic_write_json(holder_file, _writer(command=" ".join(sys.argv[:3]) or "python"))
        yield
    finally:
        lock.release()


def _infer_step(times: Sequence[np.datetime64]) -> int:
    if len(times) < 2:
        raise IngestError(
            "cannot infer the time step from a single frame; pass step_minutes (--step-minutes)"
        )
    diffs = np.diff(np.array(sorted(times), dtype="datetime64[s]")).astype(np.int64) // 60
    diffs = diffs[diffs > 0]
    if not diffs.size:
        return 0
    counts = Counter(diffs.tolist())
    top = max(counts.values())
    return int(min(d for d, n in counts.items() if n == top))  # a tie: the shorter step


def time_axis(times: Sequence[np.datetime64], step: int, max_gap_minutes: int) -> np.ndarray:
    """Return the axis over sorted ``times``: gaps up to ``max_gap_minutes`` filled at
    ``step``, longer ones left as breaks (see :func:`pipeline.cube.axis_breaks`).
    """
    times = np.array(sorted(times), dtype="datetime64[s]")
    if not step or times.size < 2:
        return times
    step_td = np.timedelta64(int(step), "m")
    limit = np.timedelta64(int(max_gap_minutes), "m")
    pieces = [times[:1]]
    for a, b in itertools.pairwise(times):
        if b - a > step_td and b - a - step_td <= limit:
            pieces.append(np.arange(a + step_td, b, step_td))
        pieces.append(np.array([b]))
    return np.concatenate(pieces)


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
    attrs = dict(template[VARIABLE].attrs)
    attrs["_CRS"] = {"wkt": template[GRID_MAPPING].attrs["crs_wkt"]}  # for GDAL's Zarr driver
    ds = xr.Dataset(
        {
            VARIABLE: (("time", "y", "x"), data, attrs),
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
    ds.time.attrs.update({"standard_name": "time", "axis": "T"})
    return ds


def _prepare_store(out: Path, report: IngestReport) -> None:
    """Under the lock: remove orphaned temporaries and truncate an interrupted write."""
    for tmp in remove_stale_temporaries(out.parent, out.name):
        log.warning("removed %s, left by an ingest that was killed", tmp)
    if not out.exists():
        return
    state = store_state(out)
    if state is None or not state.interrupted:
        return
    import zarr

    group = zarr.open_group(out, mode="r+", use_consolidated=False)
    n = state.committed
    for name in group.array_keys():
        array = group[name]
        if array.ndim and _first_dim(array) == "time" and array.shape[0] != n:
            array.resize((n, *array.shape[1:]))
    _set_commit(out, n, None)
    report.repaired = (
        f"an interrupted write ({state.pending or 'unknown writer'}) was rolled back to the "
        f"{n} committed frames"
    )
    log.warning("repaired %s: %s", out, report.repaired)


def _first_dim(array) -> str | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names:
        return names[0]
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    return dims[0] if dims else None


def _set_commit(out: Path, committed: int, pending: dict | None) -> None:
    import zarr

    group = zarr.open_group(out, mode="r+", use_consolidated=False)
    attrs = dict(group.attrs)
    attrs[COMMITTED_ATTR] = int(committed)
    if pending is None:
        attrs.pop(PENDING_ATTR, None)
    else:
        attrs[PENDING_ATTR] = json.dumps(pending)
    group.attrs.put(attrs)
    _consolidate(out)


def _consolidate(out: Path) -> None:
    """Refresh a store's consolidated metadata, where it has some (GDAL and xarray read it)."""
    if is_consolidated(out):
        import zarr

        zarr.consolidate_metadata(str(out))


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
        When no file is found or readable, ``out`` exists but is not a usable cube, or
        another ingest holds the cube for longer than ``options.wait_s``
        (:class:`CubeBusyError`).
    """
    options = options or IngestOptions()
    out = Path(out)
    report = IngestReport(cube=str(out), started=datetime.now(UTC).isoformat(timespec="seconds"))
    files, problems = discover(paths, report.ignored)
    report.skipped.extend(problems)
    report.files_found = len(files)
    if not files:
        raise IngestError(
            "no input files: " + "; ".join(f"{p['file']}: {p['reason']}" for p in problems)
        )
    try:
        with dask_scheduler(options.scheduler) as where:  # local threads or a Dask cluster
            if scans is None:
                scans = _scan_all(files, options, progress, where)
            with writer_lock(out, options.wait_s):
                _prepare_store(out, report)
                return _ingest_locked(out, files, scans, options, report, progress)
    finally:
        FRAMES.clear()


def _ingest_locked(out, files, scans, options, report, progress) -> IngestReport:
    existing = open_cube(out) if out.exists() else None
    # the report's frame registry describes the store only while the store exists
    previous = (
        json.loads(report_path(out).read_text())
        if existing is not None and report_path(out).exists()
        else {}
    )
    known: dict[str, dict[str, str]] = dict(previous.get("frames", {}))
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

    # the time grid
    existing_times = (
        np.asarray(existing.time.values, dtype="datetime64[s]") if existing is not None else None
    )
    step = (
        options.step_minutes
        or previous.get("step_minutes")
        or (existing.attrs.get("time_step_minutes") if existing is not None else None)
    )
    if not step:
        all_times = [*(existing_times if existing_times is not None else []),
                     *(np.datetime64(t, "s") for t in new)]  # fmt: skip
        step = _infer_step(all_times) if len(all_times) > 1 else 0
    report.step_minutes = int(step) if step else None
    origin = (existing_times[0] if existing_times is not None
              else min((np.datetime64(k, "s") for k in new), default=None))  # fmt: skip
    # a step asked for that is a multiple of the archive's own (--step-minutes 4 on 2-minute
    # files) thins the archive: the frames between are left out on purpose, not skipped
    # (later runs, file by file, keep thinning at the step the report remembers)
    native = int(previous.get("thinned_from_minutes") or 0)
    if options.step_minutes and len(new) > 1:
        native = _infer_step([np.datetime64(k, "s") for k in new])
    thin = bool(native) and bool(step) and native < step and step % native == 0
    report.thinned_from_minutes = native if thin else None
    for t, s in list(new.items()):
        offset = (np.datetime64(t, "s") - origin).astype(np.int64)
        if thin and offset % (60 * step) != 0 and offset % (60 * native) == 0:
            report.thinned.append({"file": s["file"], "time": t})
            del new[t]
        elif step and offset % (60 * step) != 0:
            reason = f"time {t} is not on the {step}-minute grid of the archive"
            if native and native < step and not thin:  # an asked step the files cannot make
                near = max(round(step / native), 1) * native
                reason += (f" (its files step every {native} min: --step-minutes {near}, "
                           "a multiple, would thin them)")  # fmt: skip
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
        # inside a break of the cube: the axis cannot take a frame there without a rebuild
        last = existing_times[-1]
        on_axis = set(existing_times.tolist())
        for t, s in list(new.items()):
            when = np.datetime64(t, "s")
            if when <= last and when.item() not in on_axis:
                reason = (
                    f"time {t} falls in a break of the cube (a gap longer than "
                    f"{options.max_gap_minutes} min); ingest into a new cube to insert it"
                )
                report.skipped.append({"file": s["file"], "reason": reason})
                del new[t]

    if existing is None and not new:
        _finish(report, out, known, previous)
        raise IngestError(f"nothing to ingest into {out}: every file was skipped (see report)")
    if new:
        _write(out, existing, template, new, step, options, report, progress)
    for t, s in new.items():
        known[t] = {"file": s["file"], "sha256": s["sha256"]}
    report.read = [{"file": s["file"], "time": t} for t, s in sorted(new.items())]
    _finish(report, out, known, previous)
    return report


def _write(out, existing, template, new, step, options, report, progress) -> None:
    new_times = [np.datetime64(t, "s") for t in new]
    if template is None:
        template = load_frame(next(iter(new.values()))["file"], options)
    attrs = {
        "Conventions": "CF-1.8",
        "title": "radar reflectivity cube",
        "source": "mimcast ingest",
        "time_step_minutes": int(step or 0),
    }
    with TaskBar("write", progress, "task"):
        if existing is None:
            axis = time_axis(new_times, step, options.max_gap_minutes)
            sources = [new.get(str(t), {}).get("file") for t in axis]
            ds = _frames_dataset(axis, sources, template, options)
            ds.attrs.update({**attrs, COMMITTED_ATTR: len(axis)})
            encoding = {
                VARIABLE: {
                    "chunks": (options.time_chunk, options.space_chunk, options.space_chunk),
                },
                "time": dict(TIME_ENCODING),
            }
            with atomic_path(out) as tmp:  # renamed into place when complete
                # Zarr v2 with consolidated metadata: xarray opens it without a warning, and
                # GDAL >= 3.4 (QGIS) reads it, georeferenced through the _CRS attribute
                ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=True, zarr_format=2)
            report.new_frames = sum(s is not None for s in sources)
            return

        old_times = np.asarray(existing.time.values, dtype="datetime64[s]")
        n_old = old_times.size
        index = {str(t): i for i, t in enumerate(old_times)}
        fills = sorted((index[t], s["file"]) for t, s in new.items() if t in index)
        later = [t for t in new_times if t > old_times[-1]]
        tail_axis = time_axis([old_times[-1], *later], step, options.max_gap_minutes)[1:]
        keep = {**existing.attrs, **attrs}  # open_cube left the commit attributes out
        _set_commit(out, n_old, _writer(action="fill gaps and append"))
        # gap fills: the data first, then its observed flag, each region in one step
        for i, src in fills:
            part = _frames_dataset(old_times[i : i + 1], [src], template, options)
            part = part.drop_vars([GRID_MAPPING, "x", "y"])
            for name in part.variables:
                part[name].encoding = {}
            region = {"time": slice(i, i + 1)}
            part[[VARIABLE]].chunk({"time": 1}).to_zarr(
                out, region=region, consolidated=False, safe_chunks=False
            )
            part[["observed"]].to_zarr(out, region=region, consolidated=False)
        report.filled_gaps = len(fills)
        if tail_axis.size:
            sources = [new.get(str(t), {}).get("file") for t in tail_axis]
            tail = _frames_dataset(tail_axis, sources, template, options)
            tail = tail.drop_vars([GRID_MAPPING, "x", "y"])
            for name in tail.variables:
                tail[name].encoding = {}
            # xarray replaces the store's attributes on append: carry them, still uncommitted
            tail.attrs = {**keep, COMMITTED_ATTR: n_old,
                          PENDING_ATTR: json.dumps(_writer(action="append"))}  # fmt: skip
            tail.to_zarr(out, append_dim="time", consolidated=is_consolidated(out))
            report.new_frames = sum(s is not None for s in sources)
        _set_commit(out, n_old + tail_axis.size, None)


def _finish(report: IngestReport, out: Path, known: dict, previous: dict) -> None:
    """Update gaps, breaks and time range from the store, and write the cumulative report."""
    if out.exists():
        cube = open_cube(out, quiet=True)
        times = cube.time.values
        observed = cube_observed(cube)
        report.gaps = [str(np.datetime64(t, "s")) for t, o in zip(times, observed, strict=True)
                       if not o]  # fmt: skip
        report.time_range = [str(np.datetime64(times[0], "s")), str(np.datetime64(times[-1], "s"))]
        if not report.step_minutes:
            report.step_minutes = cube.attrs.get("time_step_minutes") or None
        stamps = times.astype("datetime64[s]")
        report.breaks = [[str(stamps[i - 1]), str(stamps[i])]
                         for i in np.flatnonzero(axis_breaks(cube))]  # fmt: skip
    run = asdict(report)
    run["status"] = report.status
    payload = {
        "cube": str(out),
        "status": report.status,
        "step_minutes": report.step_minutes or previous.get("step_minutes"),
        "thinned_from_minutes": report.thinned_from_minutes or previous.get("thinned_from_minutes"),
        "time_range": report.time_range,
        "gaps": report.gaps,
        "breaks": report.breaks,
        "last_run": run,
        "runs": [*previous.get("runs", []), {k: run[k] for k in _RUN_SUMMARY}],
        "frames": dict(sorted(known.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report_path(out), payload)


_RUN_SUMMARY = (
    "started", "status", "files_found", "new_frames", "filled_gaps", "unchanged", "skipped",
    "thinned", "ignored", "duplicates", "conflicts", "repaired",
)  # fmt: skip
