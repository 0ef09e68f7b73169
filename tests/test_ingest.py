"""Ingest: round trip, duplicates, conflicts, gaps, idempotent append, broken input, memory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from mimcast.pipeline.cli import EXIT_PARTIAL, main
from mimcast.pipeline.cube import validate_cube
from mimcast.pipeline.ingest import (
    IngestError,
    IngestOptions,
    discover,
    ingest,
    open_cube,
    report_path,
)
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube, write_archive

CONFIG = SyntheticConfig(height=48, width=64, frames=8, seed=11)


@pytest.fixture
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    write_archive(CONFIG, folder)
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_state(store: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(store)): (p.stat().st_mtime_ns, _digest(p))
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def test_synthetic_archive_round_trips_exactly(archive, tmp_path):
    report = ingest([archive], tmp_path / "c.zarr")
    assert report.complete and report.new_frames == CONFIG.frames
    cube = validate_cube(open_cube(tmp_path / "c.zarr"), check_values=True)
    expected = synthetic_cube(CONFIG)
    np.testing.assert_array_equal(cube.reflectivity.values, expected.reflectivity.values)
    np.testing.assert_array_equal(cube.time.values, expected.time.values)
    np.testing.assert_array_equal(cube.x.values, expected.x.values)
    assert cube.observed.values.all()
    assert cube.reflectivity.chunks is not None  # lazy, chunked
    saved = json.loads(report_path(tmp_path / "c.zarr").read_text())
    assert saved["status"] == "complete" and len(saved["frames"]) == CONFIG.frames


def test_duplicates_are_dropped_and_conflicts_reported(archive, tmp_path):
    files = sorted(archive.iterdir())
    shutil.copy(files[2], archive / "copy_of_frame_2.h5")  # exact duplicate
    other = write_archive(dataclasses.replace(CONFIG, seed=99, frames=4), tmp_path / "other")
    shutil.copy(other[3], archive / "zz_conflicting_frame_3.h5")  # same time, other data
    report = ingest([archive], tmp_path / "c.zarr")
    assert [d["file"] for d in report.duplicates] == [
        str(archive / "synthetic_dbzh_202407011210.h5")
    ]
    assert report.duplicates[0]["duplicate_of"].endswith("copy_of_frame_2.h5")
    assert len(report.conflicts) == 1 and report.conflicts[0]["time"] == "2024-07-01T12:15:00"
    assert report.conflicts[0]["file"].endswith("zz_conflicting_frame_3.h5")
    assert report.status == "partial"
    cube = open_cube(tmp_path / "c.zarr")
    assert cube.sizes["time"] == CONFIG.frames  # one frame per time, the first kept
    np.testing.assert_array_equal(
        cube.reflectivity.values[3], synthetic_cube(CONFIG).reflectivity.values[3]
    )


def test_gaps_are_explicit_and_filled_later(archive, tmp_path):
    files = sorted(archive.iterdir())
    held_back = tmp_path / "held_back"
    held_back.mkdir()
    for f in files[3:5]:
        shutil.move(f, held_back / f.name)
    store = tmp_path / "c.zarr"
    report = ingest([archive], store)
    assert report.gaps == ["2024-07-01T12:15:00", "2024-07-01T12:20:00"]
    cube = open_cube(store)
    assert cube.sizes["time"] == CONFIG.frames
    assert cube.observed.values.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert np.isnan(cube.reflectivity.values[3:5]).all()
    assert np.diff(cube.time.values).astype("timedelta64[m]").tolist() == [
        np.timedelta64(5, "m")
    ] * (CONFIG.frames - 1)
    report = ingest([held_back], store)
    assert report.filled_gaps == 2 and report.gaps == []
    cube = open_cube(store)
    assert cube.observed.values.all()
    np.testing.assert_array_equal(
        cube.reflectivity.values, synthetic_cube(CONFIG).reflectivity.values
    )


def test_reingest_changes_nothing_and_new_files_extend_the_axis(archive, tmp_path):
    files = sorted(archive.iterdir())
    late = tmp_path / "late"
    late.mkdir()
    for f in files[6:]:
        shutil.move(f, late / f.name)
    store = tmp_path / "c.zarr"
    ingest([archive], store)
    before = _store_state(store)
    again = ingest([archive], store)
    assert again.unchanged == 6 and again.new_frames == 0 and again.complete
    assert _store_state(store) == before  # not a byte, not a timestamp changed
    more = ingest([archive, late], store)
    assert more.new_frames == 2 and more.unchanged == 6
    cube = open_cube(store)
    assert cube.sizes["time"] == CONFIG.frames
    np.testing.assert_array_equal(
        cube.reflectivity.values, synthetic_cube(CONFIG).reflectivity.values
    )


def _odim_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_broken_inputs_are_reported_one_line_each_and_left_untouched(archive, tmp_path):
    files = sorted(archive.iterdir())
    bad = tmp_path / "bad"
    bad.mkdir()
    blob = files[0].read_bytes()
    (bad / "truncated.h5").write_bytes(blob[: len(blob) // 3])
    (bad / "corrupt.h5").write_bytes(bytes(range(256)) * 40)
    (bad / "notes.dat").write_text("not radar")
    (bad / "readme.txt").write_text("a sidecar: ignored, not a problem")

    def drop_projection(f):
        del f["where"].attrs["projdef"]
        f["what"].attrs["time"] = np.bytes_(b"124000")

    def all_nodata(f):
        f["dataset1/data1/data"][...] = 255
        f["what"].attrs["time"] = np.bytes_(b"124500")

    _odim_copy(files[0], bad / "no_projection.h5", drop_projection)
    _odim_copy(files[0], bad / "all_nodata.h5", all_nodata)
    narrow = dataclasses.replace(CONFIG, width=40, frames=1, start="2024-07-01T12:50")
    other_grid = write_archive(narrow, tmp_path / "other")
    shutil.copy(other_grid[0], bad / "other_grid.h5")
    (tmp_path / "empty").mkdir()
    before = {p.name: _digest(p) for p in bad.iterdir()}

    report = ingest([archive, bad, tmp_path / "empty"], tmp_path / "c.zarr")
    reasons = {Path(s["file"]).name: s["reason"] for s in report.skipped}
    assert (
        "not a readable HDF5" in reasons["truncated.h5"] or "truncated" in reasons["truncated.h5"]
    )
    assert "unknown format" in reasons["corrupt.h5"]
    assert "unknown format" in reasons["notes.dat"]
    assert report.ignored == [str(bad / "readme.txt")] and "readme.txt" not in reasons
    assert "missing projection" in reasons["no_projection.h5"]
    assert "all nodata" in reasons["all_nodata.h5"]
    assert "differs from the archive's" in reasons["other_grid.h5"]
    assert reasons["empty"] == "empty directory"
    assert all("\n" not in r for r in reasons.values())
    assert report.new_frames == CONFIG.frames and report.status == "partial"
    assert {p.name: _digest(p) for p in bad.iterdir()} == before  # never modified or deleted
    saved = json.loads(report_path(tmp_path / "c.zarr").read_text())
    assert {Path(s["file"]).name for s in saved["last_run"]["skipped"]} == set(reasons)


def test_nothing_to_ingest_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty directory"):
        ingest([tmp_path / "empty"], tmp_path / "c.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.h5").write_text("junk")
    with pytest.raises(IngestError, match="none of the 1 files could be read"):
        ingest([tmp_path / "junk"], tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_discover_takes_globs_dirs_and_files(archive):
    files, problems = discover([archive / "*1205.h5", archive, archive / "missing.h5"])
    assert len(files) == CONFIG.frames
    assert problems == [
        {"file": str(archive / "missing.h5"), "reason": "no such file or directory"}
    ]


def test_crop_and_coarsen_map_to_a_target_grid(archive, tmp_path):
    full = synthetic_cube(CONFIG)
    x, y = full.x.values, full.y.values
    crop = (x[8] - 1, y[39] - 1, x[47] + 1, y[8] + 1)  # 40 columns x 32 rows
    report = ingest([archive], tmp_path / "c.zarr", IngestOptions(crop=crop, coarsen=4))
    assert report.complete
    cube = open_cube(tmp_path / "c.zarr")
    assert cube.sizes["x"] == 10 and cube.sizes["y"] == 8
    assert cube.x.values[0] == pytest.approx(x[8:12].mean())
    for t, row, col in [(2, 4, 5), (5, 3, 6), (0, 0, 0)]:
        block = full.reflectivity.values[t, 8 + 4 * row : 12 + 4 * row, 8 + 4 * col : 12 + 4 * col]
        z = np.where(block <= -32, 0, 10 ** (block / 10))
        got = cube.reflectivity.values[t, row, col]
        if np.isnan(z).sum() > 8:
            assert np.isnan(got)
        else:
            mean = np.nanmean(z)
            expected = 10 * np.log10(mean) if mean > 0 else -32.0
            assert got == pytest.approx(max(expected, -32.0), abs=1e-4)


def test_cli_exit_code_tells_complete_from_partial(archive, tmp_path, capsys):
    assert main(["ingest", str(archive), "--out", str(tmp_path / "a.zarr"), "--quiet"]) == 0
    (archive / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    code = main(["ingest", str(archive), "--out", str(tmp_path / "b.zarr"), "--quiet"])
    assert code == EXIT_PARTIAL
    err = capsys.readouterr().err
    assert "broken.h5" in err


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, shutil, sys
    from pathlib import Path
    import h5py, numpy as np
    from mimcast.pipeline.ingest import ingest, IngestOptions
    from mimcast.pipeline.synthetic import SyntheticConfig, write_archive
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    src = write_archive(SyntheticConfig(height=512, width=512, frames=1, seed=5), out / "seed")[0]
    arch = out / "archive"
    arch.mkdir()
    for i in range(n):
        dst = arch / f"f{i:04d}.h5"
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            minutes = 12 * 60 + 5 * i
            f["what"].attrs["date"] = np.bytes_(f"202407{1 + minutes // 1440:02d}".encode())
            m = minutes % 1440
            f["what"].attrs["time"] = np.bytes_(f"{m // 60:02d}{m % 60:02d}00".encode())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = ingest([arch], out / "c.zarr", IngestOptions(batch=4))
    assert report.new_frames == n, report
    print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_archive_length(tmp_path):
    peaks = {}
    for n in (24, 160):
        out = tmp_path / str(n)
        out.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(n), str(out)],
            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        base, peak = (int(v) for v in result.stdout.split())
        peaks[n] = (peak - base) / 1024  # MiB added by ingest
    # 136 more frames of 1 MiB each would add 136 MiB if the archive were held in memory
    assert peaks[160] - peaks[24] < 48, peaks


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("folder", "frames"),
    [("odim/rmi-20210704", 39), ("netcdf/bom-cscn-20180616", 61)],
)
def test_real_archives_ingest_into_valid_cubes(radar_samples, tmp_path, folder, frames):
    store = tmp_path / "real.zarr"
    code = main(["ingest", str(radar_samples / folder), "--out", str(store), "--quiet"])
    assert code == 0
    cube = validate_cube(open_cube(store))
    assert cube.sizes["time"] == frames and cube.observed.values.all()
    assert np.nanmax(cube.reflectivity.isel(time=slice(0, 3)).values) > 30


@pytest.mark.real_data
def test_good_files_plus_a_truncated_one(radar_samples, tmp_path):
    folder = tmp_path / "rmi"
    folder.mkdir()
    for src in sorted((radar_samples / "odim/rmi-20210704").iterdir())[:5]:
        shutil.copy(src, folder / src.name)
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:5000])
    report = ingest([folder], tmp_path / "c.zarr")
    assert report.new_frames == 4 and report.status == "partial"
    assert [s["file"] for s in report.skipped] == [str(victim)]
    assert report.gaps == ["2021-07-04T16:00:00"]


def test_a_file_off_the_time_grid_is_skipped_and_named(archive, tmp_path):
    import shutil

    first = sorted(archive.iterdir())
    odd = tmp_path / "odd"
    odd.mkdir()
    for path in first:
        shutil.copy(path, odd / path.name)
    # a frame 2 minutes after the first one: same grid, off the 5-minute time grid
    (off,) = write_archive(dataclasses.replace(CONFIG, frames=1, start="2024-07-01T12:02"),
                           tmp_path / "off")  # fmt: skip
    shutil.copy(off, odd / off.name)
    report = ingest([odd], tmp_path / "c.zarr", IngestOptions(step_minutes=5), progress=False)
    reasons = {Path(s["file"]).name: s["reason"] for s in report.skipped}
    assert "not on the 5-minute grid" in reasons[off.name]
    assert report.new_frames == CONFIG.frames


def test_a_step_that_is_a_multiple_of_the_archives_thins_it(tmp_path, capsys):
    # --step-minutes 10 on 5-minute files keeps every other frame: a choice, not a failure
    # (exit 0, no per-file warning); a later run without the option keeps thinning, and a
    # frame off both grids is still skipped
    import shutil

    files = write_archive(dataclasses.replace(CONFIG, frames=12), tmp_path / "a")
    first = tmp_path / "first"
    first.mkdir()
    for path in files[:7]:
        shutil.copy(path, first / path.name)
    store = tmp_path / "c.zarr"
    code = main(["ingest", str(first), "--out", str(store), "--step-minutes", "10", "--quiet"])
    out = capsys.readouterr()
    assert code == 0 and "3 thinned to 10-minute steps" in out.out and "skipped " not in out.err
    cube = validate_cube(open_cube(store))
    assert cube.attrs["time_step_minutes"] == 10 and cube.sizes["time"] == 4
    report = json.loads(report_path(store).read_text())
    assert report["thinned_from_minutes"] == 5
    assert len(report["last_run"]["thinned"]) == 3

    later = tmp_path / "later"
    later.mkdir()
    for path in files[7:]:
        shutil.copy(path, later / path.name)
    (off,) = write_archive(dataclasses.replace(CONFIG, frames=1, start="2024-07-01T13:02"),
                           tmp_path / "off")  # fmt: skip
    shutil.copy(off, later / off.name)
    run = ingest([later], store, IngestOptions(), progress=False)
    assert run.new_frames == 2 and len(run.thinned) == 3  # 12:40, 12:50 in; 12:35/45/55 out
    assert [Path(s["file"]).name for s in run.skipped] == [off.name]
    assert "not on the 10-minute grid" in run.skipped[0]["reason"]
    assert validate_cube(open_cube(store)).sizes["time"] == 6
    # a step the files cannot make says which one would thin them
    odd = ingest([later], tmp_path / "d.zarr", IngestOptions(step_minutes=12), progress=False)
    assert "every 5 min: --step-minutes 10, a multiple" in odd.skipped[0]["reason"]


def test_frames_before_the_cube_are_refused_with_the_times(archive, tmp_path):
    files = sorted(archive.iterdir())
    store = tmp_path / "c.zarr"
    ingest(files[4:], store, IngestOptions(), progress=False)
    before = _store_state(store)
    with pytest.raises(IngestError, match="before the cube's first frame"):
        ingest(files[:2], store, IngestOptions(), progress=False)
    assert _store_state(store) == before  # nothing written


def test_the_cube_is_zarr_v2_consolidated_for_xarray_and_gdal(archive, tmp_path):
    import warnings

    import xarray as xr

    files = sorted(archive.iterdir())
    store = tmp_path / "c.zarr"
    ingest(files[:5], store)
    ingest(files[5:], store)  # an append keeps the consolidated metadata current
    assert (store / ".zmetadata").exists() and (store / ".zgroup").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain open_zarr() must not warn
        plain = xr.open_zarr(store)
    assert plain.sizes["time"] == CONFIG.frames and plain.attrs["mimcast_frames"] == 8
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdal-bin not installed")
    info = json.loads(subprocess.run(
        ["gdalinfo", "-json", f'ZARR:"{store}":/reflectivity:7'], capture_output=True,
        text=True, check=True).stdout)  # fmt: skip
    x, y = plain.x.values, plain.y.values
    x0, dx, _, y0, _, dy = info["geoTransform"]
    assert (x0, dx) == (x[0] - (x[1] - x[0]) / 2, x[1] - x[0])
    assert (y0, dy) == (y[0] - (y[1] - y[0]) / 2, y[1] - y[0])
    assert (
        info["size"] == [CONFIG.width, CONFIG.height]
        and "PROJCRS" in info["coordinateSystem"]["wkt"]
    )


@pytest.mark.slow
def test_ingest_on_a_real_dask_cluster_matches_local_threads(archive, tmp_path, dask_cluster):
    """--scheduler tcp://... and MIMCAST_DASK_ADDRESS (the flows' setting) both send the
    decoding and the region writes to the cluster's worker; the cube is the same."""
    import os

    from conftest import cluster_tasks

    code = "import sys; from mimcast.pipeline.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "MIMCAST_DASK_ADDRESS"}

    def mimcast(*args, **extra):
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], env={**env, **extra},
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    before = cluster_tasks(dask_cluster, "scan_file"), cluster_tasks(dask_cluster, "store-map")
    flag = mimcast("ingest", archive, "--out", tmp_path / "flag.zarr", "--quiet",
                   "--scheduler", dask_cluster)  # fmt: skip
    assert flag.returncode == 0, flag.stderr[-3000:]
    middle = cluster_tasks(dask_cluster, "scan_file"), cluster_tasks(dask_cluster, "store-map")
    assert middle[0] > before[0] and middle[1] > before[1]  # scans and writes ran on the worker
    setting = mimcast("ingest", archive, "--out", tmp_path / "env.zarr", "--quiet",
                      MIMCAST_DASK_ADDRESS=dask_cluster)  # fmt: skip
    assert setting.returncode == 0, setting.stderr[-3000:]
    assert cluster_tasks(dask_cluster, "scan_file") > middle[0]
    local = ingest([archive], tmp_path / "local.zarr", IngestOptions(scheduler="threads"))
    assert local.new_frames == CONFIG.frames
    expected = open_cube(tmp_path / "local.zarr").reflectivity.values
    for name in ("flag.zarr", "env.zarr"):
        np.testing.assert_array_equal(open_cube(tmp_path / name).reflectivity.values, expected)


def test_the_inferred_step_is_the_commonest_difference_and_the_shorter_on_a_tie():
    from mimcast.pipeline.ingest import _infer_step

    t = [np.datetime64("2024-07-01T12:00") + np.timedelta64(m, "m") for m in (0, 15, 20)]
    assert _infer_step(t) == 5  # 15 and 5 once each: a gap of 15, not a 15-minute archive
    t = [np.datetime64("2024-07-01T12:00") + np.timedelta64(m, "m") for m in (0, 2, 4, 10, 12)]
    assert _infer_step(t) == 2
