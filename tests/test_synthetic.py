"""Synthetic storms: real ODIM layout, real georeferencing, determinism, and real weather."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pyproj
import pytest

from mimcast.pipeline.cube import NO_ECHO_DBZ, validate_cube
from mimcast.pipeline.synthetic import (
    StormCell,
    SyntheticConfig,
    coverage_mask,
    rain_to_dbz,
    synthetic_cube,
    write_archive,
)

SMALL = SyntheticConfig(height=96, width=128, frames=6, seed=3)


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_with_h5py(path) -> tuple[np.ndarray, dict]:
    """Decode a DBZH file the way any ODIM user would: raw * gain + offset, flags by value."""
    with h5py.File(path, "r") as f:
        what = dict(f["dataset1/data1/what"].attrs)
        raw = f["dataset1/data1/data"][()]
    dbz = raw * what["gain"] + what["offset"]
    dbz = np.where(raw == what["nodata"], np.nan, dbz)
    dbz = np.where(raw == what["undetect"], NO_ECHO_DBZ, dbz)
    return dbz.astype(np.float32), what


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return write_archive(SMALL, out), out


def test_files_carry_the_odim_structure(archive):
    paths, out = archive
    assert [p.name for p in paths][:2] == [
        "synthetic_dbzh_202407011200.h5",
        "synthetic_dbzh_202407011205.h5",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp left
    with h5py.File(paths[1], "r") as f:
        assert _s(f.attrs["Conventions"]).startswith("ODIM_H5/V2_")
        assert _s(f["what"].attrs["object"]) == "COMP"
        assert _s(f["what"].attrs["date"]) == "20240701"
        assert _s(f["what"].attrs["time"]) == "120500"
        where = f["where"].attrs
        assert where["xsize"] == 128 and where["ysize"] == 96
        assert where["xscale"] == where["yscale"] == 1000.0
        for corner in ("LL", "UL", "UR", "LR"):
            assert f"{corner}_lon" in where and f"{corner}_lat" in where
        assert "how" in f
        dwhat = f["dataset1/data1/what"].attrs
        assert _s(dwhat["quantity"]) == "DBZH"
        assert {"gain", "offset", "nodata", "undetect"} <= set(dwhat)
        data = f["dataset1/data1/data"]
        assert data.shape == (96, 128) and data.dtype == np.uint8
        assert _s(data.attrs["CLASS"]) == "IMAGE"
        assert _s(f["dataset1/what"].attrs["startdate"]) == "20240701"


def test_projdef_corners_round_trip_through_pyproj(archive):
    paths, _ = archive
    with h5py.File(paths[0], "r") as f:
        where = dict(f["where"].attrs)
    crs = pyproj.CRS.from_proj4(_s(where["projdef"]))
    to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    ll = to_xy.transform(where["LL_lon"], where["LL_lat"])
    ur = to_xy.transform(where["UR_lon"], where["UR_lat"])
    ul = to_xy.transform(where["UL_lon"], where["UL_lat"])
    # the corners span exactly xsize * xscale by ysize * yscale metres of an axis-aligned grid
    assert ur[0] - ll[0] == pytest.approx(where["xsize"] * where["xscale"], abs=0.01)
    assert ur[1] - ll[1] == pytest.approx(where["ysize"] * where["yscale"], abs=0.01)
    assert ul[0] == pytest.approx(ll[0], abs=0.01)
    # and the centre lies where the config put it
    to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform((ll[0] + ur[0]) / 2, (ll[1] + ur[1]) / 2)
    assert lon == pytest.approx(SMALL.centre_lon, abs=0.02)
    assert lat == pytest.approx(SMALL.centre_lat, abs=0.02)


def test_cube_holds_exactly_what_the_files_decode_to(archive):
    paths, _ = archive
    cube = validate_cube(synthetic_cube(SMALL), check_values=True)
    assert cube.reflectivity.shape == (6, 96, 128)
    for t, path in enumerate(paths):
        dbz, _ = _decode_with_h5py(path)
        np.testing.assert_array_equal(cube.reflectivity.values[t], dbz)
    assert str(cube.time.values[-1])[:16] == "2024-07-01T12:25"


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = write_archive(SMALL, tmp_path / "a")
    b = write_archive(SMALL, tmp_path / "b")
    c = write_archive(dataclasses.replace(SMALL, seed=4), tmp_path / "c")
    for pa, pb, pc in zip(a, b, c, strict=True):
        with h5py.File(pa) as fa, h5py.File(pb) as fb, h5py.File(pc) as fc:
            ra, rb, rc = (f["dataset1/data1/data"][()] for f in (fa, fb, fc))
        assert ra.tobytes() == rb.tobytes()
        assert ra.tobytes() != rc.tobytes()
        assert pa.read_bytes() == pb.read_bytes()  # the whole file, not only the data


def test_coverage_and_dbz_distribution_are_realistic():
    config = SyntheticConfig(frames=8, seed=1)
    cube = synthetic_cube(config)
    refl = cube.reflectivity.values
    cover = coverage_mask(config)
    assert np.isnan(refl[:, ~cover]).all()  # nodata outside coverage
    assert np.isfinite(refl[:, cover]).all()
    assert 0.6 < cover.mean() < 0.99
    inside = refl[:, cover]
    echo = inside[inside > NO_ECHO_DBZ]
    echo_fraction = echo.size / inside.size
    assert 0.03 < echo_fraction < 0.5  # mostly no echo
    assert np.percentile(echo, 5) >= 7.0  # below min_dbz is undetect
    assert 45.0 < echo.max() <= 65.0  # convective cores
    assert 15.0 < np.median(echo) < 40.0


def _cross_correlation_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Return the shift (dcol, drow) that moves ``a`` onto ``b``, with sub-pixel refinement.

    A Hann window keeps the domain edges (where echoes enter and leave) out of the estimate.
    """
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    corr = np.fft.ifft2(fb * np.conj(fa)).real
    r, c = np.unravel_index(np.argmax(corr), corr.shape)

    def refine(m1: float, m0: float, p1: float) -> float:
        denom = m1 - 2 * m0 + p1
        return 0.0 if denom == 0 else 0.5 * (m1 - p1) / denom

    h, w = corr.shape
    dr = r + refine(corr[r - 1, c], corr[r, c], corr[(r + 1) % h, c])
    dc = c + refine(corr[r, c - 1], corr[r, c], corr[r, (c + 1) % w])
    dr = dr - h if dr > h / 2 else dr
    dc = dc - w if dc > w / 2 else dc
    return dc, dr


@pytest.mark.parametrize(("wind", "seed"), [((8.0, 4.0), 2), ((-12.0, 9.0), 5)])
def test_field_moves_with_the_configured_wind(wind, seed):
    config = SyntheticConfig(
        frames=7, seed=seed, wind_u=wind[0], wind_v=wind[1], speckle_fraction=0
    )
    refl = synthetic_cube(config).reflectivity.values
    field = np.clip(np.nan_to_num(refl, nan=0.0), 0, None)
    want_c, want_r = config.mean_displacement()
    assert abs(want_c) > 2 and abs(want_r) > 1  # the test means something
    for t in range(config.frames - 1):
        dc, dr = _cross_correlation_shift(field[t], field[t + 1])
        assert dc == pytest.approx(want_c, abs=1.0), f"step {t}: col shift {dc} vs {want_c}"
        assert dr == pytest.approx(want_r, abs=1.0), f"step {t}: row shift {dr} vs {want_r}"


def test_a_cell_grows_peaks_decays_and_deforms():
    cell = StormCell(
        birth=2, lifetime=20, col=40, row=60, peak_rain=80.0, radius=7.0,
        stretch=1.5, shear=0.0, rotation=4.0, orientation=0.0,
    )  # fmt: skip
    config = SyntheticConfig(
        height=128, width=128, frames=26, seed=0, cells=(cell,), stratiform_fraction=0.0,
        speckle_fraction=0.0, texture=0.0, wind_u=6.0, wind_v=0.0, wind_variation=0.0,
        peak_fraction=0.4, radars=1, coverage_radius=1.0,
    )  # fmt: skip
    refl = synthetic_cube(config).reflectivity.values
    peak = np.nanmax(refl, axis=(1, 2))
    area = (refl >= 20.0).sum(axis=(1, 2))
    # no echo before initiation and after dissipation
    assert (peak[:3] == NO_ECHO_DBZ).all() and (peak[22:] == NO_ECHO_DBZ).all()
    # the peak comes at birth + peak_fraction * lifetime = frame 10
    assert abs(int(np.argmax(peak)) - 10) <= 1
    assert abs(int(np.argmax(area)) - 10) <= 1
    assert peak.max() == pytest.approx(float(rain_to_dbz(np.array(80.0))), abs=1.0)
    # growth then decay, monotonic on each side of the peak (0.5 dB quantisation allowed)
    assert np.all(np.diff(peak[4:11]) >= 0) and np.all(np.diff(peak[10:21]) <= 0)
    assert np.all(np.diff(area[4:11]) >= 0) and np.all(np.diff(area[10:21]) <= 0)
    # the cell drifts east with the wind: 6 m/s * 300 s / 1000 m = 1.8 px per step
    rows, cols = np.nonzero(refl[8] >= 20.0)
    rows2, cols2 = np.nonzero(refl[14] >= 20.0)
    assert cols2.mean() - cols.mean() == pytest.approx(6 * 1.8, abs=1.0)
    assert rows2.mean() == pytest.approx(rows.mean(), abs=1.0)

    # deformation: the echo stretches (aspect ratio grows) and rotates
    def shape(frame):
        r, c = np.nonzero(refl[frame] >= 15.0)
        cov = np.cov(np.stack([c, -r]).astype(float))
        evals, evecs = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(evecs[1, 1], evecs[0, 1])) % 180
        return np.sqrt(evals[1] / evals[0]), angle

    aspect_early, angle_early = shape(6)
    aspect_late, angle_late = shape(16)
    assert aspect_late > aspect_early * 1.3
    assert (angle_late - angle_early) % 180 == pytest.approx(40.0, abs=8.0)  # 4 deg/frame


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="frames=0"):
        SyntheticConfig(frames=0)
    with pytest.raises(ValueError, match="projdef"):
        SyntheticConfig(projdef="EPSG:4326")
