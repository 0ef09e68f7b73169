"""Verification: scores against hand-computed tables, baselines on pure advection, the report."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mimcast.models.checkpoint import InputConfig, save_checkpoint
from mimcast.models.mimnet import MIMNet, MIMNetConfig
from mimcast.pipeline.forecasters import get_forecaster, list_forecasters
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube
from mimcast.pipeline.verify import Scores, VerifyOptions, hindcast, reference_times


def _rows(scores, method="m", lead=5):
    return {(r["metric"], r["threshold"]): r["value"] for r in scores.table()
            if r["method"] == method and r["lead_time"] == lead}  # fmt: skip


def _straightforward(scores: Scores, method, lead, forecast, observed) -> None:
    """Scores.add as the libraries write it: pysteps' accumulators and scikit-image's SSIM
    on each field, nothing shared between methods (what Scores did until it cached the
    observation's side)."""
    from pysteps.verification import detcatscores as det
    from pysteps.verification import spatialscores as spatial
    from skimage.metrics import structural_similarity

    from mimcast.pipeline.zr import dbz_to_rate

    slot = scores._slot(method, lead)
    valid = np.isfinite(forecast) & np.isfinite(observed)
    f = np.where(valid, np.maximum(forecast, 0.0), np.nan)
    o = np.where(valid, np.maximum(observed, 0.0), np.nan)
    fv, ov = f[valid], o[valid]
    for (kind, _), table in slot["cat"].items():
        pair = (fv, ov) if kind == "dBZ" else (dbz_to_rate(fv), dbz_to_rate(ov))
        det.det_cat_fct_accum(table, *pair)
    for fss in slot["fss"].values():
        spatial.fss_accum(fss, np.nan_to_num(f, nan=0.0), np.nan_to_num(o, nan=0.0))
    slot["se"] += float(np.sum((f - o)[valid] ** 2))
    slot["ae"] += float(np.sum(np.abs(f - o)[valid]))
    slot["px"] += int(valid.sum())
    o0, f0 = np.nan_to_num(o, nan=0.0), np.nan_to_num(f, nan=0.0)
    slot["ssim"] += float(structural_similarity(o0, f0, data_range=70.0, win_size=7))
    slot["ssim_n"] += 1
    slot["n"] += 1


def test_scoring_several_methods_at_once_gives_the_libraries_sums():
    """add_lead shares the observation's side between methods: every accumulator must equal
    the straightforward per-field form, also where one method's unknown pixels differ."""
    rng = np.random.default_rng(3)
    observed = np.clip(rng.gamma(1.5, 12.0, (60, 70)), 0, 65).astype(np.float32)
    observed[:5, :9] = np.nan
    forecasts = {name: (observed + rng.normal(0, s, observed.shape)).astype(np.float32)
                 for name, s in (("a", 2.0), ("b", 8.0), ("c", 15.0))}  # fmt: skip
    forecasts["c"][40:, 50:] = np.nan  # another scored area: the observation's side again
    fast, slow = Scores(VerifyOptions()), Scores(VerifyOptions())
    for lead in (5, 10):
        fast.add_lead(lead, forecasts, observed)
        for name, fc in forecasts.items():
            _straightforward(slow, name, lead, fc, observed)
    assert fast.state() == slow.state()  # every table, sum and count, to the last bit
    assert {r["method"] for r in fast.table()} == {"a", "b", "c"}
    csi = {r["method"]: r["value"] for r in fast.table() if r["lead_time"] == 5
           and (r["metric"], r["threshold"]) == ("CSI", "20 dBZ")}  # fmt: skip
    assert csi["a"] > csi["b"] > csi["c"]


def test_categorical_scores_match_hand_computed_tables():
    obs = np.array([[25.0, 25.0, 10.0, 10.0], [25.0, 10.0, 10.0, np.nan]])
    fc = np.array([[25.0, 10.0, 25.0, 10.0], [25.0, 10.0, 10.0, 50.0]])
    scores = Scores(VerifyOptions(dbz_thresholds=(20.0,), rate_thresholds=(), fss_scales=(1,)))
    scores.add("m", 5, fc, obs)
    scores.add("m", 5, fc, obs)  # tables are summed over forecasts
    # per field: hits 2, misses 1, false alarms 1, correct negatives 3 (the NaN pixel is out)
    h, m, f, c = 4, 2, 2, 6
    n = h + m + f + c
    rows = _rows(scores)
    assert rows[("CSI", "20 dBZ")] == pytest.approx(h / (h + m + f))
    assert rows[("POD", "20 dBZ")] == pytest.approx(h / (h + m))
    assert rows[("FAR", "20 dBZ")] == pytest.approx(f / (h + f))
    expected_random = (h + m) * (h + f) / n
    assert rows[("ETS", "20 dBZ")] == pytest.approx(
        (h - expected_random) / (h + m + f - expected_random)
    )
    hss = 2 * (h * c - m * f) / ((h + m) * (m + c) + (h + f) * (f + c))
    assert rows[("HSS", "20 dBZ")] == pytest.approx(hss)
    valid = np.isfinite(obs)
    err = fc[valid] - obs[valid]
    assert rows[("MSE", "")] == pytest.approx(np.mean(err**2))
    assert rows[("MAE", "")] == pytest.approx(np.mean(np.abs(err)))


def test_fss_and_ssim_behave():
    rng = np.random.default_rng(0)
    obs = np.where(rng.random((64, 64)) > 0.8, 40.0, 0.0)
    shifted = np.roll(obs, 3, axis=1)
    scores = Scores(VerifyOptions(fss_scales=(1, 9), fss_threshold_dbz=30.0))
    scores.add("perfect", 5, obs, obs)
    scores.add("shifted", 5, shifted, obs)
    perfect, shift = _rows(scores, "perfect"), _rows(scores, "shifted")
    assert perfect[("FSS", "30 dBZ @ 1 px")] == pytest.approx(1.0)
    assert perfect[("SSIM", "")] == pytest.approx(1.0)
    # a displaced field is poor pixel by pixel and better at larger scales
    assert shift[("FSS", "30 dBZ @ 9 px")] > shift[("FSS", "30 dBZ @ 1 px")]
    assert shift[("SSIM", "")] < 0.9


def test_nan_regions_are_excluded():
    obs = np.full((10, 10), 30.0)
    fc = np.full((10, 10), 30.0)
    obs[:, :5] = np.nan  # no data
    fc[:, :5] = 70.0  # whatever the forecast says there
    scores = Scores(VerifyOptions())
    scores.add("m", 5, fc, obs)
    rows = _rows(scores)
    assert rows[("MSE", "")] == 0.0 and rows[("CSI", "20 dBZ")] == 1.0
    # no valid pixel forecasts >= 40 dBZ: FAR is 0/0 (the 70 dBZ in the no-data half would
    # make it 1 if no-data pixels counted)
    assert np.isnan(rows[("FAR", "40 dBZ")])


def _in_one_place_and_halves(seed: int):
    """Four random forecasts scored together (``one``) and as two halves (``a``, ``b``)."""
    rng = np.random.default_rng(seed)
    fields = [(rng.random((16, 16)) * 50, rng.random((16, 16)) * 50) for _ in range(4)]
    one, a, b = Scores(VerifyOptions()), Scores(VerifyOptions()), Scores(VerifyOptions())
    for i, (f, o) in enumerate(fields):
        one.add("m", 5, f, o)
        (a if i < 2 else b).add("m", 5, f, o)
    return fields, one, a, b


def test_merge_equals_accumulating_in_one_place():
    _, one, a, b = _in_one_place_and_halves(1)
    merged = Scores(VerifyOptions()).merge(a).merge(b)
    for r1, r2 in zip(one.table(), merged.table(), strict=True):
        assert r1["value"] == pytest.approx(r2["value"], nan_ok=True)


def test_stored_scores_merge_like_the_scores_they_came_from():
    import json

    fields, one, a, b = _in_one_place_and_halves(2)
    for f, o in fields:
        b.add("other", 10, f, o)
    b.add("none", 5, np.zeros((16, 16)), np.zeros((16, 16)))  # no event: CSI is 0/0
    stored = [json.loads(json.dumps(s.state())) for s in (a, b)]  # through a file's text
    merged = Scores(VerifyOptions())
    for state in stored:
        merged.merge(Scores.from_state(state, VerifyOptions()))
    assert _rows(merged) == pytest.approx(_rows(one), nan_ok=True)
    assert _rows(merged, "other", 10) == pytest.approx(_rows(b, "other", 10), nan_ok=True)
    assert _rows(merged)[("CSI", "20 dBZ")] != _rows(a)[("CSI", "20 dBZ")]  # both halves count
    assert np.isnan(_rows(merged, "none")[("CSI", "20 dBZ")])
    with pytest.raises(ValueError, match="scores made with"):
        Scores.from_state(stored[0], VerifyOptions(dbz_thresholds=(25.0,)))


@pytest.fixture(scope="module")
def advection_cube():
    # pure advection: stratiform rain with frozen shape, uniform wind, no cells
    config = SyntheticConfig(height=96, width=96, frames=30, seed=4, cell_rate=0.0,
                             stratiform_fraction=0.3, stratiform_evolution_frames=1e9,
                             wind_variation=0.0, speckle_fraction=0.0, wind_u=12.0, wind_v=-6.0,
                             texture=0.4, radars=1, coverage_radius=1.0)  # fmt: skip
    return synthetic_cube(config)


def test_extrapolation_beats_persistence_on_pure_advection(advection_cube):
    refs = reference_times(advection_cube, 4, 8, every=4)
    assert len(refs) >= 4
    methods = {name: get_forecaster(name) for name in ("persistence", "extrapolation", "sprog")}
    scores = hindcast(advection_cube, refs, 4, 8, 5, methods, VerifyOptions())
    mse = {
        (r["method"], r["lead_time"]): r["value"] for r in scores.table() if r["metric"] == "MSE"
    }
    csi = {(r["method"], r["lead_time"]): r["value"] for r in scores.table()
           if r["metric"] == "CSI" and r["threshold"] == "20 dBZ"}  # fmt: skip
    for lead in range(15, 45, 5):
        assert mse[("extrapolation", lead)] < mse[("persistence", lead)], lead
        assert csi[("extrapolation", lead)] > csi[("persistence", lead)], lead
        # S-PROG smooths the small scales it cannot predict: lower MSE than persistence too
        assert mse[("sprog", lead)] < mse[("persistence", lead)], lead


def _slow_noisy_frames(seed: int, n: int = 7, speed: float = 0.25) -> np.ndarray:
    """A smooth echo moving ``speed`` px per frame along x, each frame with its own noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 4)
    base = np.clip((base - base.mean()) / base.std() * 12 + 25, 0, 55)
    frames = [ndimage.shift(base, (0, speed * k), order=3, mode="nearest")
              + rng.normal(0, 4.0, base.shape) for k in range(n)]  # fmt: skip
    return np.stack(frames).astype(np.float32)


def test_motion_of_short_step_archives_is_estimated_on_frames_min_step_apart():
    """At 2-minute steps the echo moves a fraction of a pixel per frame and Lucas-Kanade on
    consecutive frames is noisy: extrapolation and S-PROG take every 2nd frame (4 minutes)."""
    from mimcast.pipeline.forecasters import motion_field

    errors = {0: [], 4: []}
    for seed in range(4):
        frames = _slow_noisy_frames(seed)
        for min_step in errors:
            v = get_forecaster("extrapolation", min_step_minutes=min_step).at_time_step(2)
            v = v.velocity(frames)[:, 20:76, 20:76]  # px per 2-minute step, away from edges
            errors[min_step].append(np.hypot(v[0] - 0.25, v[1]).mean())
    assert np.mean(errors[4]) < 0.6 * np.mean(errors[0]), errors

    frames = _slow_noisy_frames(0)
    for name in ("extrapolation", "sprog"):
        fc = get_forecaster(name).at_time_step(2)
        assert (fc.stride, fc.input_frames) == (2, 5)
        np.testing.assert_allclose(fc.velocity(frames), motion_field(frames[-5::2]) / 2)
        assert get_forecaster(name).at_time_step(5).input_frames == 3
        assert get_forecaster(name, min_step_minutes=0).at_time_step(2).stride == 1
        assert get_forecaster(name).at_time_step(2)(frames, 3).shape == (3, 96, 96)
        with pytest.raises(ValueError, match="needs 5 input frames"):
            fc(frames[-4:], 3)
    # S-PROG's AR(2) reads 3 frames even when its motion reads fewer
    assert get_forecaster("sprog", motion_frames=2).input_frames == 3


@pytest.mark.real_data
def test_motion_is_pysteps_dense_lucas_kanade_bit_for_bit(radar_samples, monkeypatch):
    """The motion every method shares is pysteps' dense Lucas-Kanade with its interpolation run
    in bands on all cores: the same field to the last bit, on real radar and in the corner
    cases pysteps treats apart (no echo, one vector, all vectors equal)."""
    from mimcast.pipeline import forecasters
    from mimcast.pipeline.readers import read

    files = sorted((radar_samples / "odim/rmi-20210704").iterdir())[-3:]
    frames = np.concatenate([read(f)["reflectivity"].values for f in files])
    frames = np.nan_to_num(np.maximum(frames, forecasters.FLOOR_DBZ), nan=forecasters.FLOOR_DBZ)
    reference = forecasters.pysteps().motion.get_method("LK")
    ours = forecasters.lucas_kanade(frames)
    assert np.abs(ours).max() > 0.5  # the echoes move: a field worth comparing
    assert np.array_equal(ours, reference(frames, verbose=False))
    # bands of 7 rows: band edges fall inside the echo
    with monkeypatch.context() as patch:
        patch.setattr(forecasters, "IDW_BAND_PIXELS", 7 * frames.shape[2])
        assert np.array_equal(forecasters.lucas_kanade(frames), ours)

    flat = np.full((3, 40, 50), forecasters.FLOOR_DBZ, np.float32)
    assert np.array_equal(forecasters.lucas_kanade(flat), reference(flat, verbose=False))
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 40, (30, 2))
    for uv in (rng.normal(size=(30, 2)), np.ones((30, 2)), rng.normal(size=(1, 2))):
        expected = forecasters.pysteps().utils.interpolate.idwinterp2d(
            xy[: len(uv)], uv, np.arange(50), np.arange(40))  # fmt: skip
        got = forecasters.idw_dense(xy[: len(uv)], uv, (40, 50), workers=3)
        assert got.shape == (2, 40, 50) and np.array_equal(got, expected)


def test_forecasters_share_one_signature():
    assert {"mimnet", "persistence", "extrapolation", "sprog"} <= set(list_forecasters())
    inputs = np.random.default_rng(2).random((4, 32, 32)).astype(np.float32) * 40
    inputs[-1, :3] = np.nan  # outside the coverage of the last frame
    persistence = get_forecaster("persistence")
    np.testing.assert_array_equal(persistence(inputs, 2)[1], inputs[-1])
    for name in ("extrapolation", "sprog"):
        out = get_forecaster(name)(inputs, 6)
        assert out.shape == (6, 32, 32) and out.dtype == np.float32
        assert np.isnan(out[:, :3]).all() and np.isfinite(out[:, 10:20, 10:20]).all()
    with pytest.raises(ValueError, match=r"unknown forecast method 'nope'; known: .*persistence"):
        get_forecaster("nope")


def test_evaluate_writes_scores_report_and_plots(advection_cube, tmp_path):
    from mimcast.pipeline.cli import main

    store = tmp_path / "c.zarr"
    advection_cube.to_zarr(store, consolidated=False)
    torch.manual_seed(0)
    tiny = MIMNet(MIMNetConfig(input_length=4, output_length=6, num_layers=2, num_hidden=8,
                               filter_size=3, patch_size=4))  # fmt: skip
    ckpt = save_checkpoint(
        tiny, tmp_path / "tiny.safetensors", extra={"step": 0}, inputs=InputConfig(0.0, 70.0)
    )
    out = tmp_path / "eval"
    code = main(["evaluate", str(store), "--checkpoint", str(ckpt), "--out", str(out),
                 "--every", "5", "--quiet", "--methods", "mimnet", "persistence",
                 "extrapolation"])  # fmt: skip
    assert code == 0
    with (out / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"method", "lead_time", "metric", "threshold", "value", "n"}
    methods = {r["method"] for r in rows}
    assert methods == {"mimnet", "persistence", "extrapolation"}
    for method in methods:
        leads = {int(r["lead_time"]) for r in rows if r["method"] == method}
        assert leads == {5, 10, 15, 20, 25, 30}
    report = (out / "report.md").read_text()
    for word in ("mimnet", "persistence", "extrapolation", "| 30 |", "skill_csi.png"):
        assert word in report
    for name in ("skill_csi.png", "skill_mse.png", "examples.png", "differences.png"):
        assert (out / name).stat().st_size > 5000
    # model minus each baseline per lead and score, with intervals where there are enough
    # reference times (here too few: 5 minutes apart, their forecasts overlap)
    with (out / "differences.csv").open() as fh:
        diffs = list(csv.DictReader(fh))
    pairs = {(r["method"], r["baseline"]) for r in diffs}
    assert pairs == {("mimnet", "persistence"), ("mimnet", "extrapolation")}
    assert {int(r["lead_time"]) for r in diffs} == {5, 10, 15, 20, 25, 30}
    assert "## Is the difference real?" in report and "### mimnet minus extrapolation" in report


def test_on_pure_advection_extrapolation_is_significantly_better_than_persistence():
    from mimcast.pipeline.significance import Group, block_length, differences
    from mimcast.pipeline.verify import score_references

    config = SyntheticConfig(height=96, width=96, frames=72, seed=5, cell_rate=0.0,
                             stratiform_fraction=0.6, stratiform_evolution_frames=1e9,
                             wind_variation=0.0, speckle_fraction=0.0, wind_u=12.0, wind_v=-6.0,
                             texture=0.4, radars=1, coverage_radius=1.0)  # fmt: skip
    cube = synthetic_cube(config)
    refs = reference_times(cube, 4, 6, every=6)  # 30 minutes apart: forecasts do not overlap
    assert block_length(refs, 30) == 1 and len(refs) >= 8
    methods = {name: get_forecaster(name) for name in ("persistence", "extrapolation")}
    parts = score_references(cube, refs, 4, 6, 5, methods, VerifyOptions())
    rows = differences([Group(tuple(parts))])
    verdicts = {(r["lead_time"], r["metric"], r["threshold"]): r for r in rows
                if r["method"] == "extrapolation" and r["baseline"] == "persistence"}  # fmt: skip
    for lead in (15, 20, 25, 30):
        mse = verdicts[(lead, "MSE", "")]
        assert mse["verdict"] == "better" and mse["ci_high"] < 0, mse
        csi = verdicts[(lead, "CSI", "20 dBZ")]
        assert csi["verdict"] == "better" and csi["ci_low"] > 0, csi


def test_a_hindcast_runs_no_more_reference_times_at_once_than_memory_holds(
    advection_cube, monkeypatch, caplog
):
    """One reference time per core, unless that many would not fit in half the available
    memory: a 16-core machine and a 4400 x 3800 grid (about 10 GB each) must not start 16."""
    from mimcast.pipeline import compute, verify

    gb = 1e9
    assert compute.local_workers(10 * gb, cpus=16, available=24 * gb) == 1
    assert compute.local_workers(3 * gb, cpus=16, available=24 * gb) == 4
    assert compute.local_workers(0.3 * gb, cpus=16, available=24 * gb) == 16
    assert compute.local_workers(30 * gb, cpus=2, available=4 * gb) == 1  # at least one
    room = compute.available_memory()
    assert room is None or room > 0
    monkeypatch.setattr(compute, "available_memory", lambda: None)  # memory unknown
    assert compute.local_workers(3 * gb, cpus=8) == 8

    # a machine with room for one of them at a time: the hindcast says so and runs them
    per_ref = verify.REFERENCE_BYTES_PER_PIXEL * 96 * 96
    monkeypatch.setattr(compute, "available_memory", lambda: int(3 * per_ref))
    monkeypatch.setattr(compute.os, "cpu_count", lambda: 8)
    import threading
    import time

    running, most, lock = [0], [0], threading.Lock()

    def slow_persistence(inputs, n_leads):  # counts the reference times running at once
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return np.repeat(inputs[-1:], n_leads, axis=0)

    refs = reference_times(advection_cube, 4, 2, every=6)
    with caplog.at_level("INFO", logger="mimcast.pipeline.compute"):
        scores = hindcast(advection_cube, refs, 4, 2, 5, {"slow": slow_persistence})
    assert "1 reference time at a time (not 8, one per core)" in caplog.text
    assert most[0] == 1 and len(refs) >= 3
    assert {r["n"] for r in scores.table()} == {len(refs)}


@pytest.mark.slow
def test_hindcast_on_a_real_dask_cluster_matches_local_threads(advection_cube, dask_cluster):
    from conftest import cluster_tasks

    before = cluster_tasks(dask_cluster, "score_reference")
    refs = reference_times(advection_cube, 4, 3, every=8)
    methods = {"persistence": get_forecaster("persistence")}
    remote = hindcast(advection_cube, refs, 4, 3, 5, methods, scheduler=dask_cluster)
    assert cluster_tasks(dask_cluster, "score_reference") > before  # the cluster scored them
    local = hindcast(advection_cube, refs, 4, 3, 5, methods)
    for a, b in zip(remote.table(), local.table(), strict=True):
        assert (a["method"], a["lead_time"], a["metric"], a["threshold"]) == (
            b["method"], b["lead_time"], b["metric"], b["threshold"])  # fmt: skip
        assert a["value"] == pytest.approx(b["value"], nan_ok=True)
    assert {r["n"] for r in remote.table()} == {len(refs)}
