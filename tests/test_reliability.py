"""What operations throw at the cube: concurrent writers, interrupted appends, event archives,
absurd times, hostile files, and the one-line failures of every command (issue 13).

Each test reproduces a failure seen before the fix: it could fail, and did.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from mimcast.pipeline.cli import EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE
from mimcast.pipeline.cube import (
    axis_breaks,
    complete_windows,
    open_cube,
    store_state,
    validate_cube,
)
from mimcast.pipeline.ingest import IngestOptions, ingest, report_path, writer_lock
from mimcast.pipeline.readers import ReaderError, read
from mimcast.pipeline.readers.common import check_time
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube, write_archive

REPO = Path(__file__).resolve().parents[1]
CONFIG = SyntheticConfig(height=48, width=64, frames=8, seed=11)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``mimcast`` as a user would, in its own process."""
    code = "import sys; from mimcast.pipeline.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, **kwargs)  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    write_archive(CONFIG, folder)
    return folder


def _set_time(path: Path, date: bytes, hhmmss: bytes) -> None:
    with h5py.File(path, "r+") as f:
        f["what"].attrs["date"] = np.bytes_(date)
        f["what"].attrs["time"] = np.bytes_(hhmmss)


# --------------------------------------------------------------------------------------------
# 1. concurrent writers


def test_concurrent_ingests_leave_a_valid_cube(tmp_path):
    config = dataclasses.replace(CONFIG, frames=24)
    files = write_archive(config, tmp_path / "archive")
    halves = [tmp_path / "a", tmp_path / "b"]
    for half, part in zip(halves, (files[:12], files[12:]), strict=True):
        half.mkdir()
        for f in part:
            shutil.copy(f, half / f.name)
    store = tmp_path / "c.zarr"
    # both start at once: one creates the cube, the other waits for the lock, then appends
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from mimcast.pipeline.cli import main; sys.exit(main())",
                "ingest",
                str(src),
                str(tmp_path / "archive"),
                "--out",
                str(store),
                "--quiet",
            ],
            env=ENV,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for src in halves
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    cube = validate_cube(open_cube(store), check_values=True)
    assert cube.sizes["time"] == 24 and cube.observed.values.all()
    np.testing.assert_array_equal(
        cube.reflectivity.values, synthetic_cube(config).reflectivity.values
    )


def test_a_writer_that_waits_too_long_names_the_holder(archive, tmp_path):
    store = tmp_path / "c.zarr"
    with writer_lock(store, wait_s=0):
        result = cli("ingest", archive, "--out", store, "--wait", "0.5", "--quiet")
    line = one_error_line(result)
    assert result.returncode == EXIT_RUNTIME
    assert f"PID {os.getpid()}" in line and "another ingest is writing" in line
    assert not store.exists()


# --------------------------------------------------------------------------------------------
# 2. interrupted appends

KILL_MID_APPEND = textwrap.dedent("""
    import os, signal, sys
    import xarray as xr
    from mimcast.pipeline.ingest import ingest
    original = xr.Dataset.to_zarr
    def append_then_die(self, *args, **kwargs):
        if kwargs.get("append_dim"):
            original(self, *args, **{**kwargs, "compute": False})  # axis and flags, no data
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    xr.Dataset.to_zarr = append_then_die
    ingest([sys.argv[1]], sys.argv[2])
""")


def test_an_interrupted_append_is_invisible_then_repaired(archive, tmp_path, caplog):
    files = sorted(archive.iterdir())
    first, late = tmp_path / "first", tmp_path / "late"
    for folder, part in ((first, files[:5]), (late, files[5:])):
        folder.mkdir()
        for f in part:
            shutil.copy(f, folder / f.name)
    store = tmp_path / "c.zarr"
    ingest([first], store)
    killed = subprocess.run([sys.executable, "-c", KILL_MID_APPEND, str(late), str(store)],
                            env=ENV, capture_output=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9
    state = store_state(store)
    assert state.interrupted and state.frames == 8 and state.committed == 5

    # readers see the committed frames only, and are told
    with caplog.at_level("WARNING", logger="mimcast"):
        cube = validate_cube(open_cube(store), check_values=True)
    assert cube.sizes["time"] == 5 and cube.observed.values.all()
    assert not np.isnan(cube.reflectivity.values).all(axis=(1, 2)).any()
    assert "interrupted" in caplog.text and "run 'mimcast ingest'" in caplog.text
    nowcast = cli("nowcast", store, "--method", "persistence", "--out", tmp_path / "now")
    assert nowcast.returncode == 0, nowcast.stderr
    assert "a write was interrupted" in nowcast.stderr
    assert "202407011220" in nowcast.stdout  # from the last committed frame, 12:20

    # the next ingest rolls back and appends; the cube is whole again
    report = ingest([late], store)
    assert report.repaired and "rolled back to the 5 committed frames" in report.repaired
    assert report.new_frames == 3 and not store_state(store).interrupted
    cube = validate_cube(open_cube(store), check_values=True)
    np.testing.assert_array_equal(
        cube.reflectivity.values, synthetic_cube(CONFIG).reflectivity.values
    )


def test_a_killed_fresh_ingest_leaves_no_orphan(archive, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no longer runs, as after a kill -9
    orphan = tmp_path / f".c.zarr.{gone.pid}.tmp"
    (orphan / "reflectivity").mkdir(parents=True)
    (orphan / "reflectivity" / "c0").write_bytes(b"half a chunk")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f".c.zarr.{running.pid}.tmp"  # a running writer's: not ours to remove
    live.mkdir()
    try:
        ingest([archive], tmp_path / "c.zarr")
    finally:
        running.kill()
        running.wait()
    assert not orphan.exists() and live.exists()
    assert open_cube(tmp_path / "c.zarr").sizes["time"] == CONFIG.frames


# --------------------------------------------------------------------------------------------
# 3. cost follows the frames: event archives and breaks


def _event_archive(tmp_path: Path) -> Path:
    folder = tmp_path / "events"
    for i, start in enumerate(("2015-06-01T12:00", "2016-07-02T14:00", "2017-08-03T16:00")):
        event = dataclasses.replace(CONFIG, frames=6, start=start, seed=i)
        for f in write_archive(event, tmp_path / f"event{i}"):
            folder.mkdir(exist_ok=True)
            shutil.copy(f, folder / f.name)
    return folder


def test_event_archive_costs_its_frames_and_no_window_crosses_a_break(tmp_path):
    from mimcast.pipeline.verify import reference_times

    store = tmp_path / "c.zarr"
    report = ingest([_event_archive(tmp_path)], store)
    assert report.complete and report.new_frames == 18 and report.gaps == []
    assert [b[0][:4] for b in report.breaks] == ["2015", "2016"]
    cube = open_cube(store)
    assert cube.sizes["time"] == 18  # not 180,000 gap frames
    breaks = axis_breaks(cube)
    assert np.flatnonzero(breaks).tolist() == [6, 12]
    starts = complete_windows(cube.observed.values, 4, breaks=breaks)
    assert starts.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    refs = reference_times(cube, 3, 1)
    assert len(refs) == 9 and all(str(r)[:4] in ("2015", "2016", "2017") for r in refs)
    saved = json.loads(report_path(store).read_text())
    assert len(saved["breaks"]) == 2


def test_a_later_event_is_appended_after_a_break(tmp_path):
    events = _event_archive(tmp_path)
    files = sorted(events.iterdir())
    store = tmp_path / "c.zarr"
    ingest(files[:12], store)  # 2015 and 2016
    later = ingest(files[12:], store)  # 2017, a year later: appended, no gap frames
    assert later.new_frames == 6 and later.gaps == [] and len(later.breaks) == 2
    cube = open_cube(store)
    assert cube.sizes["time"] == 18 and np.flatnonzero(axis_breaks(cube)).tolist() == [6, 12]


def test_short_gaps_stay_frames_long_ones_become_breaks(archive, tmp_path):
    files = sorted(archive.iterdir())
    for f in files[2:5]:  # 3 missing frames = a 20-minute gap
        f.unlink()
    short = ingest([archive], tmp_path / "short.zarr", IngestOptions(max_gap_minutes=60))
    assert open_cube(tmp_path / "short.zarr").sizes["time"] == 8 and len(short.gaps) == 3
    long = ingest([archive], tmp_path / "long.zarr", IngestOptions(max_gap_minutes=10))
    assert open_cube(tmp_path / "long.zarr").sizes["time"] == 5 and long.gaps == []
    assert long.breaks == [["2024-07-01T12:05:00", "2024-07-01T12:25:00"]]
    # a frame that falls inside a closed break cannot be inserted: skipped, named, rest kept
    refill = write_archive(dataclasses.replace(CONFIG, frames=3), tmp_path / "refill")
    again = ingest([refill[2]], tmp_path / "long.zarr", IngestOptions(max_gap_minutes=10))
    assert "falls in a break" in again.skipped[0]["reason"]


def test_one_file_from_1970_does_not_cost_fifty_years(archive, tmp_path):
    epoch = archive / "zz_epoch.h5"
    shutil.copy(sorted(archive.iterdir())[0], epoch)
    _set_time(epoch, b"19700101", b"000000")
    report = ingest([archive], tmp_path / "c.zarr")
    assert report.new_frames == CONFIG.frames and report.status == "partial"
    (skip,) = report.skipped
    assert skip["file"] == str(epoch) and "implausible" in skip["reason"]
    assert open_cube(tmp_path / "c.zarr").sizes["time"] == CONFIG.frames


# --------------------------------------------------------------------------------------------
# 4. absurd times


def test_a_file_from_the_year_2500_is_refused_not_wrapped_to_1915(archive, tmp_path):
    future = archive / "future.h5"
    shutil.copy(sorted(archive.iterdir())[0], future)
    _set_time(future, b"25000101", b"000000")
    with pytest.raises(ReaderError, match="2500-01-01T00:00:00 is implausible"):
        read(future)
    report = ingest([archive], tmp_path / "c.zarr", IngestOptions(step_minutes=5))
    assert report.new_frames == CONFIG.frames  # no good frame dropped
    assert [Path(s["file"]).name for s in report.skipped] == ["future.h5"]


@pytest.mark.parametrize(
    "when",
    [
        datetime(2500, 1, 1),
        np.datetime64("2500-01-01T00:00", "m"),
        np.datetime64("2500-01-01T00:00", "m").astype("datetime64[ns]"),  # wrapped: 1915
        np.datetime64("NaT"),
        datetime(1979, 12, 31, 23, 55),
    ],
)
def test_times_outside_the_radar_era_are_refused(when):
    with pytest.raises(ReaderError, match=r"implausible|missing"):
        check_time("f.h5", when)
    assert check_time("f.h5", datetime(2021, 7, 4, 16)) == np.datetime64("2021-07-04T16:00")


# --------------------------------------------------------------------------------------------
# 5. decompression and size bombs; 6. non-finite values

BOMBS = textwrap.dedent("""
    import json, resource, sys
    from mimcast.pipeline.readers import ReaderError, read
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors = {}
    for path in sys.argv[1:]:
        try:
            read(path)
            errors[path] = None
        except ReaderError as err:
            errors[path] = err.problem
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"errors": errors, "growth_mb": (peak - base) / 1024}))
""")


def _gzip_with_zeros(path: Path, head: bytes, zeros: int) -> None:
    block = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(head)
        for _ in range(zeros >> 20):
            fh.write(block)


def test_bombs_are_refused_before_they_fill_memory(radar_samples, tmp_path):
    rx = radar_samples / "radolan/raa01-rx_10000-1408102050-dwd---bin.gz"
    real = gzip.decompress(rx.read_bytes())
    radolan_bomb = tmp_path / "radolan_bomb.gz"
    _gzip_with_zeros(radolan_bomb, real, 1500 << 20)  # 1.5 GB of trailing zeros
    pgm = next((radar_samples / "single-frames/fmi-pgm").iterdir())
    raw = gzip.decompress(pgm.read_bytes()) if pgm.read_bytes()[:2] == b"\x1f\x8b" else None
    raw = raw or pgm.read_bytes()
    pgm_trailing = tmp_path / "pgm_trailing.pgm.gz"
    _gzip_with_zeros(pgm_trailing, raw, 1500 << 20)
    header_end = raw.index(b"\n255\n") if b"\n255\n" in raw else None
    assert header_end is not None
    lines = raw[:header_end].split(b"\n")
    lines[-1] = b"60000 60000"  # 3.6 billion pixels declared
    pgm_huge = tmp_path / "pgm_huge.pgm"
    pgm_huge.write_bytes(b"\n".join(lines) + raw[header_end:])
    odim_huge = tmp_path / "odim_huge.h5"
    shutil.copy(write_archive(dataclasses.replace(CONFIG, frames=1), tmp_path / "one")[0],
                odim_huge)  # fmt: skip
    with h5py.File(odim_huge, "r+") as f:
        del f["dataset1/data1/data"]
        f.create_dataset("dataset1/data1/data", shape=(20000, 20000), dtype="u1",
                         chunks=(1000, 1000), compression="gzip", fillvalue=100)  # fmt: skip
    assert odim_huge.stat().st_size < 100_000
    gif_huge = tmp_path / "AQC151351545F_00005.801.gif"  # a 60000² GIF header, no pixels
    gif_huge.write_bytes(b"GIF89a" + struct.pack("<HHBBB", 60000, 60000, 0xF7, 0, 0)
                         + bytes(768) + b"," + struct.pack("<HHHHB", 0, 0, 60000, 60000, 0)
                         + b"\x08\x02\x4c\x01\x00;")  # fmt: skip
    bombs = [radolan_bomb, pgm_trailing, pgm_huge, odim_huge, gif_huge]
    result = subprocess.run([sys.executable, "-c", BOMBS, *map(str, bombs)], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    errors = {Path(k).name: v for k, v in figures["errors"].items()}
    assert "trailing garbage" in errors["radolan_bomb.gz"]
    assert "trailing garbage" in errors["pgm_trailing.pgm.gz"]
    assert "60000x60000" in errors["pgm_huge.pgm"] and "exceeds the limit" in errors["pgm_huge.pgm"]
    assert "20000x20000" in errors["odim_huge.h5"]
    assert "too large" in errors[gif_huge.name]
    # a real frame here is at most a few MB: memory stays within a small multiple of it
    assert figures["growth_mb"] < 200, figures


def test_infinite_values_become_no_data(archive, tmp_path):
    path = archive / sorted(p.name for p in archive.iterdir())[0]
    with h5py.File(path, "r+") as f:
        codes = f["dataset1/data1/data"][()]
        what = f["dataset1/data1/what"].attrs
        dbz = codes.astype(np.float32) * what["gain"] + what["offset"]
        dbz[:5, :5], dbz[5:10, :5] = np.inf, -np.inf
        del f["dataset1/data1/data"]
        f["dataset1/data1/data"] = dbz
        for key in ("gain", "offset", "nodata", "undetect"):
            what[key] = {"gain": 1.0, "offset": 0.0, "nodata": -9999.0, "undetect": -9998.0}[key]
    ds = read(path)
    values = ds.reflectivity.values[0]
    assert np.isnan(values[:10, :5]).all() and np.isfinite(values[10:]).any()
    ingest([archive], tmp_path / "c.zarr")
    validate_cube(open_cube(tmp_path / "c.zarr"), check_values=True)


# --------------------------------------------------------------------------------------------
# 7. sidecars, special files; 8. file names that forge lines


def test_sidecars_are_ignored_and_special_files_reported(archive, tmp_path):
    first = sorted(archive.iterdir())[0]
    (archive / (first.name + ".aux.xml")).write_text("<PAMDataset/>")  # QGIS looked at it
    (archive / "SHA256SUMS").write_text("abc  x.h5\n")
    (archive / "README.md").write_text("# archive\n")
    store = tmp_path / "c.zarr"
    clean = cli("ingest", archive, "--out", store, "--quiet")
    assert clean.returncode == 0, clean.stderr
    report = json.loads(report_path(store).read_text())["last_run"]
    assert len(report["ignored"]) == 3 and report["skipped"] == []

    os.mkfifo(archive / "pipe")
    (archive / "dangling.h5").symlink_to(tmp_path / "nowhere.h5")
    special = cli("ingest", archive, "--out", tmp_path / "d.zarr", "--quiet")
    assert special.returncode == EXIT_PARTIAL
    assert f"skipped {archive / 'pipe'}: not a regular file (FIFO)" in special.stderr
    assert f"skipped {archive / 'dangling.h5'}: broken symbolic link" in special.stderr


def test_a_file_name_with_a_newline_cannot_forge_output(archive, tmp_path):
    (archive / "x.h5\nskipped forged.h5: all is well").write_bytes(b"junk")
    result = cli("ingest", archive, "--out", tmp_path / "c.zarr", "--quiet")
    assert result.returncode == EXIT_PARTIAL
    lines = result.stderr.splitlines()
    assert not any(line.startswith("skipped forged") for line in lines)
    assert any("x.h5\\nskipped forged.h5: all is well: unknown format" in line for line in lines)


# --------------------------------------------------------------------------------------------
# 9, 10, 12. one line, the right exit code


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ingest", "ARCHIVE", "--out", "C", "--step-minutes", "-5"], "--step-minutes: -5 must"),
        (["ingest", "ARCHIVE", "--out", "C", "--step-minutes", "0"], "--step-minutes: 0 must"),
        (["ingest", "ARCHIVE", "--out", "C", "--coarsen", "0"], "--coarsen: 0 must be >= 1"),
        (["ingest", "ARCHIVE", "--out", "C", "--coarsen", "-2"], "--coarsen: -2 must be >= 1"),
        (["ingest", "ARCHIVE", "--out", "C", "--crop", "5", "0", "1", "9"], "XMIN < XMAX"),
        (["nowcast", "C", "--out", "O", "--device", "banana"], "'banana' is not one of"),
        (["nowcast", "C", "--out", "O", "--device", "cuda:7"], "cuda:7"),
        (["train", "C", "--out", "O", "--device", "banana"], "'banana' is not one of"),
        (["train", "C", "--out", "O", "--device", "cuda:7"], "cuda:7"),
        (["nowcast", "C", "--out", "O", "--leads", "-5", "0"], "--leads: -5 must be >= 1"),
        (["nowcast", "C", "--out", "O", "--time", "13:02x"], "--time: '13:02x' is not an ISO"),
        (["nowcast", "C", "--out", "O", "--time", "2024-07-01T12:30+02:00"], "is not an ISO"),
        (["evaluate", "C", "--out", "O", "--every", "0"], "--every: 0 must be >= 1"),
        (["evaluate", "C", "--out", "O", "--every", "-1"], "--every: -1 must be >= 1"),
        (["evaluate", "C", "--out", "O", "--start", "notiso"], "--start: 'notiso' is not an ISO"),
        (["demo", "--frames", "0"], "--frames: 0 must be >= 1"),
        (["average", "O"], "out: not a run directory"),
        (["average", "O", "--from", "0"], "--from: 0 must be >= 1"),
    ],
)
def test_usage_errors_exit_2_with_one_line(archive, tmp_path, args, fragment):
    names = {"ARCHIVE": archive, "C": tmp_path / "c.zarr", "O": tmp_path / "out"}
    result = cli(*[names.get(a, a) for a in args])
    assert result.returncode == EXIT_USAGE
    assert fragment in one_error_line(result)
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "out").exists()


def test_runtime_errors_exit_1_with_one_line(archive, tmp_path):
    missing = cli("nowcast", tmp_path / "none.zarr", "--out", tmp_path / "o")
    assert missing.returncode == EXIT_RUNTIME and "no such cube" in one_error_line(missing)
    huge = cli("ingest", archive, "--out", tmp_path / "c.zarr", "--coarsen", "100", "--quiet")
    assert huge.returncode == EXIT_RUNTIME
    assert "coarsen factor 100 is larger than the grid 48x64" in one_error_line(huge)
    ingest([archive], tmp_path / "c.zarr")
    off = cli("nowcast", tmp_path / "c.zarr", "--method", "persistence", "--out", tmp_path / "o",
              "--time", "2024-07-01T12:32")  # fmt: skip
    assert off.returncode == EXIT_RUNTIME
    assert "2024-07-01T12:32 is not a frame of the cube" in one_error_line(off)
    assert "12:30" in off.stderr and "12:35" in off.stderr
    late = cli("nowcast", tmp_path / "c.zarr", "--method", "persistence", "--out", tmp_path / "o",
               "--time", "2024-07-02T12:00")  # fmt: skip
    assert "outside the cube, which runs from" in one_error_line(late)


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from mimcast.pipeline.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails like ENOSPC
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(sys.argv[2:]))
""")


def test_a_full_disk_while_writing_a_nowcast_is_one_line_and_keeps_the_old_file(archive, tmp_path):
    ingest([archive], tmp_path / "c.zarr")
    out = tmp_path / "now"
    args = ["nowcast", str(tmp_path / "c.zarr"), "--method", "persistence", "--out", str(out)]
    ok = cli(*args)
    assert ok.returncode == 0, ok.stderr
    (product,) = out.glob("*.nc")
    before = product.read_bytes()
    limit = str(len(before) // 2)  # the disk fills half-way through the new file
    full = subprocess.run([sys.executable, "-c", FULL_DISK, limit, *args], capture_output=True,
                          text=True, env=ENV, timeout=300)  # fmt: skip
    assert full.returncode == EXIT_RUNTIME
    line = one_error_line(full)
    assert str(product) in line and "writing failed" in line
    assert product.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [product.name]  # no temporary left


# --------------------------------------------------------------------------------------------
# 11. no valid pixel


def test_a_nowcast_from_inputs_without_a_valid_pixel_fails_and_writes_nothing(tmp_path):
    cube = synthetic_cube(dataclasses.replace(CONFIG, frames=6))
    cube["reflectivity"][-2:] = np.nan  # the feed broke: frames arrive, but empty
    cube.to_zarr(tmp_path / "c.zarr", consolidated=False)
    result = cli("nowcast", tmp_path / "c.zarr", "--method", "extrapolation", "--out",
                 tmp_path / "out")  # fmt: skip
    assert result.returncode == EXIT_RUNTIME
    assert "has no valid pixel" in one_error_line(result)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nc"))


# --------------------------------------------------------------------------------------------
# 12. demo: Prefect's tracebacks stay out of the user's way


def test_demo_failure_is_one_error_line_without_prefect_tracebacks(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("the demo cannot make a folder here")
    result = cli("demo", "--out", blocker / "demo", "--frames", "8", "--size", "32", timeout=600)
    assert result.returncode == EXIT_RUNTIME
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mimcast demo: error")]
    assert len(errors) == 1 and "a_file" in errors[0], result.stderr[-3000:]
