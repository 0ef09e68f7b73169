"""The Lagrangian MIMNet: advection on tensors, training packs, and skill on real radar."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mimcast.models.advection import (
    extrapolate,
    from_lagrangian,
    to_lagrangian,
    trajectories,
    warp,
)
from mimcast.pipeline import forecasters
from mimcast.pipeline.forecasters import MIMNetForecaster, get_forecaster
from mimcast.pipeline.verify import patch_seam_ratio
from mimcast.pipeline.zr import NO_ECHO_DBZ as NO_ECHO


def _blob(h=48, w=64, row=20.0, col=20.0, sigma=4.0):
    r, c = np.mgrid[0:h, 0:w]
    return np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_uniform_motion_moves_a_blob_by_whole_steps():
    velocity = torch.zeros(1, 2, 48, 64)
    velocity[:, 0], velocity[:, 1] = 3.0, -1.0  # 3 px/step along x, 1 px/step up
    disp = trajectories(velocity, 4)
    torch.testing.assert_close(disp[3, 0, :, 10, 10], torch.tensor([12.0, -4.0]))
    field = torch.from_numpy(_blob())[None, None]
    # where the echo at (row, col) will be in 4 steps: sample ahead along the motion
    ahead, ok = warp(field, disp[3])
    expected = torch.from_numpy(_blob(row=20 + 4, col=20 - 12))
    inside = ok[0, 0] > 0
    torch.testing.assert_close(ahead[0, 0][inside], expected[inside], atol=1e-5, rtol=0)
    # pixels whose source lies beyond the right edge are unknown, not "no rain"
    assert not inside[:, 52:].any() and not inside[:4].any() and inside[4:, :52].all()


def test_lagrangian_round_trip_of_a_persistent_field_is_extrapolation():
    velocity = torch.zeros(1, 2, 48, 64)
    velocity[:, 0] = 2.0
    frames = torch.from_numpy(np.stack([_blob(col=20 + 2 * k) for k in range(-3, 1)]))
    frames = frames[None, :, None]  # (1, 4, 1, H, W): the blob moving 2 px/step
    valid = torch.ones_like(frames)
    lag, ok = to_lagrangian(frames, valid, velocity, 4)
    # in the moving frame every input is the reference frame: nothing left to learn
    for k in range(3):
        inside = ok[0, k, 0] > 0
        torch.testing.assert_close(lag[0, k, 0][inside], lag[0, 3, 0][inside], atol=1e-5, rtol=0)
    out, known, none = from_lagrangian(lag[:, -1:].expand(1, 3, 1, 48, 64), velocity)
    assert none is None
    for k in range(3):  # persistence in the moving frame = advection of the last frame
        inside = known[0, k, 0] > 0
        expected = torch.from_numpy(_blob(col=20 + 2 * (k + 1)))
        torch.testing.assert_close(out[0, k, 0][inside], expected[inside], atol=1e-5, rtol=0)
        assert not inside[:, : 2 * (k + 1)].any()  # advected in from the left edge: unknown
    # the last frame moved lead by lead, as pm-advected's reference: the same fields
    moved = list(extrapolate(frames[:, -1], valid[:, -1], velocity, 3))
    for k, (values, ok) in enumerate(moved):
        torch.testing.assert_close(ok, known[:, k], atol=0, rtol=0)
        torch.testing.assert_close(values, out[:, k], atol=1e-6, rtol=0)
    # moved to the nearest pixel instead (pm-advected's reference): only observed values
    slow = velocity * 0.7  # fractional displacements, where bilinear values would be new
    observed = set(frames[0, -1, 0].flatten().tolist())
    _, _, carried = from_lagrangian(lag[:, -1:].expand(1, 3, 1, 48, 64), slow,
                                    (frames[:, -1], valid[:, -1]))  # fmt: skip
    for k, (values, ok) in enumerate(
        extrapolate(frames[:, -1], valid[:, -1], slow, 3, mode="nearest")
    ):
        assert ok.sum() > 0.9 * ok.numel()
        assert set(values[ok > 0].tolist()) <= observed
        # moved along with a forecast: the same values, NaN where not valid
        torch.testing.assert_close(carried[:, k], torch.where(ok > 0, values, torch.nan),
                                   atol=0, rtol=0, equal_nan=True)  # fmt: skip


def test_patch_seam_ratio_detects_block_texture():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(64, 64)), axis=1)
    assert patch_seam_ratio(smooth, 4) == pytest.approx(1.0, abs=0.1)
    blocky = np.kron(rng.normal(size=(16, 16)), np.ones((4, 4))) * 5 + smooth * 0.1
    assert patch_seam_ratio(blocky, 4) > 3


def _pack(tmp_path, **synthetic):
    """A synthetic cube (5-minute steps) and its pack of 4 -> 6 frame windows, 32-px patches."""
    from mimcast.pipeline.packs import PackConfig, build_pack
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

    cube = synthetic_cube(SyntheticConfig(**synthetic))
    store = tmp_path / "c.zarr"
    cube.to_zarr(store, consolidated=False)
    config = PackConfig(n_inputs=4, n_outputs=6, patch=32, stride=16, min_coverage=0.01)
    return cube, build_pack([store], tmp_path / "pack.npz", config, progress=False)


def test_pack_round_trip_and_lagrangian_targets(tmp_path):
    from mimcast.pipeline.packs import PackDataset

    cube, pack = _pack(tmp_path, height=64, width=64, frames=40, seed=2, wind_u=15.0)
    eul = PackDataset(pack, "train", frame="eulerian")
    lag = PackDataset(pack, "train", frame="lagrangian")
    assert len(eul) == len(lag) > 0 and len(PackDataset(pack, "val")) > 0
    frames, valid = eul[0]
    assert frames.shape == (10, 1, 32, 32) and valid.shape == frames.shape
    # Eulerian items are the cube's values (quantised to 0.3 dB)
    _, i, r, c = eul.items[0]
    start = int(eul.arrays["starts_0"][i])
    dbz = np.nan_to_num(cube.reflectivity.values[start : start + 10, r : r + 32, c : c + 32],
                        nan=0.0)  # fmt: skip
    np.testing.assert_allclose(frames[:, 0].numpy() * 70, np.clip(dbz, 0, 70), atol=0.2)

    # moving with the wind, the targets change less than in the fixed frame
    def change(ds):
        total = 0.0
        for j in range(len(ds)):
            x, v = ds[j]
            ok = (v[3:] > 0) & (v[3:4] > 0)
            total += float(((x[3:] - x[3:4]).abs() * ok).sum() / ok.sum().clamp_min(1))
        return total

    assert change(lag) < 0.8 * change(eul)


def test_a_pack_with_min_step_cuts_short_step_archives_into_windows_of_every_kth_frame(tmp_path):
    # as MIMNet forecasts a 2-minute archive on 4-minute steps, training can take its windows
    # 4 minutes apart: a window from frame s equals one of the same archive thinned to
    # 4 minutes, and windows start at every frame (both phases of the thinning are used)
    from mimcast.pipeline.packs import PackConfig, PackDataset, build_pack
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

    cube = synthetic_cube(SyntheticConfig(height=64, width=64, frames=40, seed=2, wind_u=15.0,
                                          step_minutes=2))  # fmt: skip
    cube.to_zarr(tmp_path / "fast.zarr", consolidated=False)
    thin = cube.isel(time=slice(0, None, 2)).assign_attrs(time_step_minutes=4)
    thin.to_zarr(tmp_path / "thin.zarr", consolidated=False)
    config = PackConfig(n_inputs=4, n_outputs=6, patch=32, stride=16, min_coverage=0.01,
                        val_fraction=0.0)  # fmt: skip
    four = dataclasses.replace(config, min_step_minutes=4)
    strided = build_pack([tmp_path / "fast.zarr"], tmp_path / "a.npz", four, progress=False)
    thinned = build_pack([tmp_path / "thin.zarr"], tmp_path / "b.npz", config, progress=False)
    plain = build_pack([tmp_path / "fast.zarr"], tmp_path / "c.npz", config, progress=False)
    a, b = PackDataset(strided, frame="eulerian"), PackDataset(thinned, frame="eulerian")
    c = PackDataset(plain, frame="eulerian")
    assert a.meta["strides"] == [2] and b.meta["strides"] == c.meta["strides"] == [1]
    starts_a, starts_b = a.arrays["starts_0"].tolist(), b.arrays["starts_0"].tolist()
    assert starts_a == list(range(40 - 18)) and starts_b == list(range(20 - 9))  # span 19, 10
    assert c.arrays["starts_0"].tolist() == list(range(40 - 9))
    whole = (slice(None), slice(None))
    for m in range(len(starts_b)):
        xa, va = a._normalised(0, starts_a.index(2 * m), *whole)
        xb, vb = b._normalised(0, m, *whole)
        torch.testing.assert_close(xa, xb, atol=0, rtol=0)
        torch.testing.assert_close(va, vb, atol=0, rtol=0)
        # the motion is measured on the same frames: per 4-minute model step
        np.testing.assert_array_equal(a.arrays["velocity_0"][starts_a.index(2 * m)],
                                      b.arrays["velocity_0"][m])  # fmt: skip
    assert not np.array_equal(a.arrays["velocity_0"][0], c.arrays["velocity_0"][0])


def test_a_pack_cut_with_another_min_step_is_refused(tmp_path):
    from mimcast.models.mimnet import MIMNetConfig
    from mimcast.models.train import TrainConfig
    from mimcast.pipeline.config import ConfigError
    from mimcast.pipeline.sequences import SequenceConfig
    from mimcast.pipeline.training import RunConfig, train_from_pack

    _, pack = _pack(tmp_path, height=64, width=64, frames=20, seed=2)  # min_step_minutes 0
    data = SequenceConfig(input_length=4, output_length=6, frame="lagrangian", patch=32,
                          min_step_minutes=4)  # fmt: skip
    config = RunConfig(MIMNetConfig(input_length=4, output_length=6), data,
                       TrainConfig(device="cpu", max_steps=1))  # fmt: skip
    with pytest.raises(ConfigError, match="cut with min_step_minutes = 0, the configuration "
                       "wants 4; rebuild it"):  # fmt: skip
        train_from_pack(pack, tmp_path / "run", config, progress=False)


def test_lagrangian_items_cut_from_a_region_equal_those_of_the_whole_grid(tmp_path):
    # items transform only the patch and the margin its trajectories need (local speed):
    # they must equal the same patch cut from the whole window moved into its frame
    from mimcast.pipeline.packs import PackDataset

    _, pack = _pack(tmp_path, height=96, width=128, frames=20, seed=5, wind_u=20.0,
                    wind_variation=12.0, wind_scale_km=60.0, cell_rate=4.0)  # fmt: skip
    region = PackDataset(pack, "train", frame="lagrangian")
    whole = PackDataset(pack, "train", frame="lagrangian", device="cpu")
    speeds = np.abs(region.arrays["velocity_0"].astype(np.float32))
    assert speeds.max() > 1.5 * np.median(speeds)  # the motion varies: margins differ
    margins = {region._margin(k, i, r, c) for k, i, r, c in region.items}
    assert len(margins) > 1
    for j in range(0, len(region), max(len(region) // 12, 1)):
        (x, v), (xw, vw) = region[j], whole[j]
        torch.testing.assert_close(v, vw, atol=0, rtol=0)
        torch.testing.assert_close(x * v, xw * vw, atol=2e-3, rtol=0)  # float16 storage


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    # a resumed run (a fresh dataset), another loader worker or another access order must
    # draw the same rotation/flip for an item as one uninterrupted run; epochs differ
    from mimcast.pipeline.packs import PackDataset

    _, pack = _pack(tmp_path, height=64, width=64, frames=30, seed=3, wind_u=10.0)
    a = PackDataset(pack, "train", frame="eulerian", augment=True, seed=7)
    plain = PackDataset(pack, "train", frame="eulerian")
    n = min(len(a), 12)
    first = [a[j][0] for j in range(n)]
    b = PackDataset(pack, "train", frame="eulerian", augment=True, seed=7)
    for j in reversed(range(n)):
        torch.testing.assert_close(b[j][0], first[j], atol=0, rtol=0)
    assert any(not torch.equal(first[j], plain[j][0]) for j in range(n))  # it augments
    a.set_epoch(1)
    assert any(not torch.equal(a[j][0], first[j]) for j in range(n))  # new draws per epoch
    b.set_epoch(1)
    for j in range(n):
        torch.testing.assert_close(a[j][0], b[j][0], atol=0, rtol=0)


def _tiny_forecaster(frame: str = "eulerian", **options):
    from mimcast.models.checkpoint import InputConfig
    from mimcast.models.mimnet import MIMNet, MIMNetConfig

    options.setdefault("refine", 1)  # on the archive's grid unless a test says otherwise
    torch.manual_seed(0)
    config = MIMNetConfig(input_length=4, output_length=3, num_layers=2, num_hidden=8,
                          filter_size=3, patch_size=4)  # fmt: skip
    return MIMNetForecaster.from_model(MIMNet(config), InputConfig(0.0, 70.0, frame=frame),
                                       device="cpu", postprocess="none", **options)  # fmt: skip


@pytest.mark.parametrize(("minutes", "min_step", "stride"),
                         [(5, 4, 1), (2, 4, 2), (3, 4, 2), (1, 4, 4), (4, 4, 1), (2, 0, 1),
                          (10, 4, 1), (2, 6, 3)])  # fmt: skip
def test_model_steps_span_at_least_min_step_minutes(minutes, min_step, stride):
    fc = _tiny_forecaster(min_step_minutes=min_step).at_time_step(minutes)
    assert fc.stride == stride
    assert fc.input_frames == 3 * stride + 1  # 4 model inputs, stride apart
    assert fc.max_leads == fc.default_leads == 3 * stride
    assert _tiny_forecaster().stride == 1  # time step unknown: every frame


def test_a_short_step_archive_gets_model_steps_and_interpolated_leads_between():
    fc = _tiny_forecaster(echo_threshold_dbz=-1e9).at_time_step(2)  # 4-minute model steps
    plain = _tiny_forecaster(echo_threshold_dbz=-1e9)  # every frame it is given
    rng = np.random.default_rng(1)
    frames = rng.uniform(0, 60, size=(9, 32, 40)).astype(np.float32)  # 2 extra old frames
    out = fc(frames, 6)
    ref = plain(frames[-7:][::2], 3)  # the model steps: frames 4 minutes apart
    np.testing.assert_allclose(out[1::2], ref, atol=1e-4)  # leads 4, 8, 12 min
    last = np.clip(frames[-1], 0, 70)
    np.testing.assert_allclose(out[0], (last + ref[0]) / 2, atol=1e-3)  # lead 2 min
    np.testing.assert_allclose(out[2], (ref[0] + ref[1]) / 2, atol=1e-3)  # lead 6 min
    assert "every 2 frames: 4-minute model steps" in fc.describe()
    with pytest.raises(ValueError, match="needs 7 input frames"):
        fc(frames[-4:], 6)


def test_the_model_runs_on_a_finer_grid_and_forecasts_on_the_archives_pixels():
    """refine = 2: the model sees every pixel repeated 2 x 2 times, and its forecast comes
    back as the linear-Z mean of each 2 x 2 block."""
    from mimcast.pipeline.forecasters import refined
    from mimcast.pipeline.zr import coarsen_dbz

    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 60, size=(4, 24, 36)).astype(np.float32)
    frames[:, :3, :5] = np.nan  # outside the coverage
    for frame in ("eulerian", "lagrangian"):
        fine = _tiny_forecaster(frame, echo_threshold_dbz=-1e9)  # on whatever grid it is given
        two = _tiny_forecaster(frame, echo_threshold_dbz=-1e9, refine=2)
        out = two(frames, 3)
        assert out.shape == (3, 24, 36)
        np.testing.assert_allclose(out, coarsen_dbz(fine(refined(frames, 2), 3), 2), atol=1e-4)
        assert np.isnan(out[:, :3, :5]).all()  # no data where the last frame has none
        if frame == "eulerian":  # (Lagrangian: also where echoes come from outside the grid)
            assert np.isfinite(out[:, 3:, 5:]).all()
        # not the same as running on the archive's grid
        assert np.nanmax(np.abs(out - fine(frames, 3))) > 0.1
    assert "on a 2x finer grid" in two.describe()
    with pytest.raises(ValueError, match="refine=0"):
        _tiny_forecaster(refine=0)


@pytest.mark.parametrize(("archive_m", "training_m", "refine"),
                         [(4448, 2000, 2), (2000, 2000, 1), (2900, 2000, 1), (1000, 2000, 1),
                          (6000, 2000, 3), (None, 2000, 1), (4000, None, 1)])  # fmt: skip
def test_the_model_runs_near_its_training_grid_by_default(archive_m, training_m, refine):
    from mimcast.models.checkpoint import InputConfig
    from mimcast.models.mimnet import MIMNet, MIMNetConfig
    from mimcast.pipeline.forecasters import at_pixel_size

    config = MIMNetConfig(input_length=4, output_length=3, num_layers=2, num_hidden=8,
                          filter_size=3, patch_size=4)  # fmt: skip
    fc = MIMNetForecaster.from_model(MIMNet(config), InputConfig(0.0, 70.0, pixel_m=training_m),
                                     device="cpu")  # fmt: skip
    assert at_pixel_size(fc, archive_m).grid_refine == refine
    assert at_pixel_size(dataclasses.replace(fc, refine=3), archive_m).grid_refine == 3  # given
    assert at_pixel_size(get_forecaster("extrapolation"), archive_m) is not None  # no-op


def test_the_shipped_model_records_its_training_grid():
    from mimcast.models.checkpoint import read_header
    from mimcast.pipeline.defaults import SHIPPED_CHECKPOINT

    assert read_header(SHIPPED_CHECKPOINT)[2].pixel_m == 2000.0  # all its cubes: 2 km


def test_linear_z_block_means_give_repeated_pixels_back():
    from mimcast.pipeline.forecasters import refined
    from mimcast.pipeline.zr import NO_ECHO_DBZ, coarsen_dbz

    rng = np.random.default_rng(4)
    field = rng.uniform(-10, 65, size=(2, 6, 9)).astype(np.float32)
    field[0, 1, 2], field[1, 4, 4] = np.nan, NO_ECHO_DBZ
    for k in (2, 3):
        np.testing.assert_allclose(coarsen_dbz(refined(field, k), k), field, atol=1e-4)
    # a block of 0 and 20 dBZ averages Z: 10 log10((1 + 100) / 2), not 10 dBZ
    block = np.array([[0.0, 20.0], [0.0, 20.0]], dtype=np.float32)
    assert coarsen_dbz(block, 2)[0, 0] == pytest.approx(10 * np.log10(50.5), abs=1e-4)


def test_lagrangian_leads_between_model_steps_move_one_archive_step_each():
    """The echo of a steadily moving blob is where its motion puts it at every 2-minute lead,
    not only at the model's 4-minute steps."""
    fc = get_forecaster("mimnet", device="cpu", postprocess="none").at_time_step(2)
    assert fc.stride == 2
    frames = np.stack([45 * _blob(h=64, w=96, col=20 + 2 * k, sigma=5) for k in range(7)])
    frames = np.where(frames > 5, frames, np.float32(NO_ECHO)).astype(np.float32)
    out = fc(frames, 8)
    cols = np.arange(96)
    for j in range(8):
        echo = np.nan_to_num(np.maximum(out[j], 0))
        centre = (echo.sum(axis=0) * cols).sum() / echo.sum()
        assert centre == pytest.approx(32 + 2 * (j + 1), abs=1.0), j


@pytest.fixture(scope="module")
def unseen_cube(radar_samples, tmp_path_factory):
    """DWD's RADKLIM YW archive: the shipped model was trained without it (see MODEL_CARD)."""
    from mimcast.pipeline.cli import main
    from mimcast.pipeline.cube import open_cube

    store = tmp_path_factory.mktemp("yw") / "yw.zarr"
    code = main(["ingest", str(radar_samples / "radolan-yw-20170816"), "--out", str(store),
                 "--coarsen", "2", "--quiet"])  # fmt: skip
    assert code == 0
    return open_cube(store)


@pytest.mark.slow
@pytest.mark.real_data
def test_shipped_model_beats_persistence_on_real_radar(unseen_cube):
    from mimcast.pipeline.verify import VerifyOptions, hindcast, reference_times

    model = MIMNetForecaster()
    refs = reference_times(unseen_cube, model.input_frames, 6)
    assert len(refs) == 3
    methods = {"mimnet": model, "persistence": get_forecaster("persistence")}
    scores = hindcast(unseen_cube, refs, model.input_frames, 6, 5, methods, VerifyOptions())
    mse = {(r["method"], r["lead_time"]): r["value"] for r in scores.table()
           if r["metric"] == "MSE"}  # fmt: skip
    csi = {(r["method"], r["lead_time"]): r["value"] for r in scores.table()
           if r["metric"] == "CSI" and r["threshold"] == "20 dBZ"}  # fmt: skip
    for lead in (10, 20, 30):
        assert mse[("mimnet", lead)] < mse[("persistence", lead)], lead
        assert csi[("mimnet", lead)] > csi[("persistence", lead)], lead


@pytest.mark.slow
@pytest.mark.real_data
def test_real_nowcast_has_no_patch_grid(unseen_cube):
    from mimcast.pipeline.nowcast import NowcastOptions, nowcast

    for refine in (1, 2):  # on the archive's grid, and on a twice finer one (the default)
        fc = MIMNetForecaster(refine=refine)
        forecast = nowcast(unseen_cube, fc, NowcastOptions(time="latest"))
        dbz = np.maximum(forecast.reflectivity.values, 0.0)
        # the model's patches meet every patch / refine archive pixels
        period = fc.loaded.model.config.patch_size // refine
        ratio = patch_seam_ratio(dbz, period)
        assert ratio < 1.10, (refine, ratio)


def test_stable_order_equals_a_stable_argsort_ties_and_signs_included():
    from mimcast.pipeline.forecasters import stable_order

    rng = np.random.default_rng(3)
    cases = [
        rng.normal(0, 30, 5000).astype(np.float32),
        np.round(rng.normal(5, 20, 5000)).astype(np.float32),  # many ties
        np.array([0.0, -0.0, 1, -1, -0.0, 0.0, 3.4e38, -3.4e38, 1e-45, -1e-45], np.float32),
    ]
    for values in cases:
        np.testing.assert_array_equal(stable_order(values), np.argsort(values, kind="stable"))


def test_probability_matching_gives_each_lead_the_reference_distribution():
    from mimcast.pipeline.forecasters import probability_match

    rng = np.random.default_rng(4)
    reference = rng.gamma(2.0, 10.0, (40, 50)).astype(np.float32)
    forecast = rng.normal(20, 5, (3, 40, 50)).astype(np.float32)
    forecast[1, :5] = np.nan
    out = probability_match(forecast, reference)
    assert np.isnan(out[1, :5]).all() and np.isfinite(out[1, 5:]).all()
    for k in (0, 2):  # same values as the reference, in the forecast's ranks
        np.testing.assert_allclose(np.sort(out[k].ravel()), np.sort(reference.ravel()), rtol=1e-6)
        assert (np.argsort(out[k].ravel(), kind="stable") == np.argsort(forecast[k].ravel(),
                kind="stable")).mean() > 0.99  # fmt: skip


def test_wet_probability_matching_keeps_each_leads_rain_area_and_matches_only_the_rain():
    from mimcast.pipeline.forecasters import probability_match

    rng = np.random.default_rng(5)
    wet = 10.0
    reference = np.where(rng.random((40, 50)) < 0.3, rng.gamma(2.0, 12.0, (40, 50)) + wet, 0.0)
    reference[:3] = np.nan
    forecast = rng.normal(4, 6, (3, 40, 50)).astype(np.float32)  # less rain (16 %)
    forecast[2, :6] = np.nan
    out = probability_match(forecast, reference.astype(np.float32), wet)
    ref_rain = np.sort(reference[np.isfinite(reference) & (reference >= wet)])
    for k in range(3):
        rain = np.isfinite(forecast[k]) & (forecast[k] >= wet)
        # the same area as the forecast's own, not the reference's (30 %)
        np.testing.assert_array_equal(np.isfinite(out[k]) & (out[k] >= wet), rain)
        assert abs(rain.mean() - 0.3) > 0.05
        # weaker pixels and unknown ones are left as they were
        np.testing.assert_array_equal(out[k][~rain], forecast[k][~rain])
        # inside it: the reference's rain quantiles, in the forecast's order
        got = out[k][rain]
        expect = np.quantile(ref_rain, (np.arange(got.size) + 0.5) / got.size, method="hazen")
        np.testing.assert_allclose(np.sort(got), expect, rtol=1e-5)
        assert (np.diff(got[np.argsort(forecast[k][rain], kind="stable")]) >= 0).all()
    # the whole-field matching gives every lead the reference's rain area instead
    full = probability_match(forecast, reference.astype(np.float32))
    observed = np.isfinite(reference)
    assert abs((full[0] >= wet).mean() - (reference[observed] >= wet).mean()) < 0.01


def test_probability_matching_to_one_reference_per_lead_uses_the_pixels_both_know():
    from mimcast.pipeline.forecasters import probability_match

    rng = np.random.default_rng(6)
    wet = 10.0
    forecast = rng.normal(15, 8, (3, 30, 40)).astype(np.float32)
    forecast[:, :, :4] = forecast[:, :, 36:] = np.nan  # unknown at every lead
    references = (
        rng.gamma(2.0, 10.0, (3, 30, 40)).astype(np.float32) + 5 * np.arange(3)[:, None, None]
    )
    references[1, :10] = np.nan  # lead 2's reference does not reach the top rows
    references[:, :, 36:] = 500.0  # known only to the references: must not count
    out = probability_match(forecast, references, wet)
    for k in range(3):
        both = np.isfinite(references[k]) & np.isfinite(forecast[k])
        ref_rain = np.sort(references[k][both & (references[k] >= wet)])
        rain = np.isfinite(forecast[k]) & (forecast[k] >= wet)
        got = np.sort(out[k][rain])
        expect = np.quantile(ref_rain, (np.arange(got.size) + 0.5) / got.size, method="hazen")
        np.testing.assert_allclose(got, expect, rtol=1e-5)
        assert got.max() < 500.0
    assert np.isnan(out[:, :, :4]).all() and np.isnan(out[:, :, 36:]).all()
    with pytest.raises(ValueError, match="per-lead reference"):
        probability_match(forecast, references[:2], wet)


def test_pm_advected_matches_each_lead_to_the_observed_rain_still_on_the_grid(monkeypatch):
    """A strong core moves off the grid's right edge while a weaker one stays on it:
    pm-wet keeps giving the remaining rain the departed core's intensities, pm-advected only
    those of the rain that is still there (and, without motion, is pm-wet)."""
    fc = get_forecaster("mimnet", device="cpu", refine=1).at_time_step(5)
    h, w = 48, 96
    frames = np.stack([50 * _blob(h, w, row=24, col=84 + 4 * k, sigma=4)
                       + 28 * _blob(h, w, row=24, col=24 + 4 * k, sigma=6)
                       for k in range(-3, 1)])  # fmt: skip
    frames = np.where(frames > 5, frames, np.float32(NO_ECHO)).astype(np.float32)
    wet = dataclasses.replace(fc, postprocess="pm-wet")(frames, 6)
    moved = dataclasses.replace(fc, postprocess="pm-advected")(frames, 6)
    for k in (3, 4, 5):  # the strong core (peak 50 dBZ at 84 + 4 (k + 1)) has left by then
        assert np.nanmax(wet[k]) > 45, k
        assert np.nanmax(moved[k]) < 32, k
    np.testing.assert_array_equal(np.isnan(moved), np.isnan(wet))
    # alone, pm-advected moves its reference along the forecast's own trajectories (pm-wet's
    # forecast, cached above, had none): the same reference, so the same nowcast
    forecasters._RAW.clear()
    with monkeypatch.context() as m:  # the separate path must not run
        m.setattr(MIMNetForecaster, "_advected_last", None)
        alone = dataclasses.replace(fc, postprocess="pm-advected")(frames, 6)
    np.testing.assert_array_equal(alone, moved)
    # the moved reference is not kept once used: a repeat takes the separate path
    np.testing.assert_array_equal(dataclasses.replace(fc, postprocess="pm-advected")(frames, 6),
                                  moved)  # fmt: skip
    still = np.stack([frames[-1]] * 4)  # no motion: nothing leaves, the same reference
    np.testing.assert_allclose(dataclasses.replace(fc, postprocess="pm-advected")(still, 3),
                               dataclasses.replace(fc, postprocess="pm-wet")(still, 3),
                               atol=1e-3)  # fmt: skip


def test_the_shipped_models_default_post_processing_is_the_one_its_card_states():
    # the checkpoint header decides what nowcast, evaluate and serve do; the card tells users
    import re

    from mimcast.models.checkpoint import read_header
    from mimcast.pipeline.defaults import DATA, SHIPPED_CHECKPOINT

    card = (DATA / "MODEL_CARD.md").read_text()
    shipped = card[card.index(f"## `data/{SHIPPED_CHECKPOINT.name}`") :]
    stated = re.search(r"default post-processing `([a-z-]+)`", shipped)
    assert stated, "the model card does not state the shipped model's default post-processing"
    assert read_header(SHIPPED_CHECKPOINT)[2].postprocess == stated.group(1)


def test_a_step_aware_model_is_trained_and_run_with_each_archives_model_step(tmp_path):
    # step_input: training items carry the minutes between their frames (the archive's step
    # times the pack's stride), and the forecaster feeds the model the same for its archive
    from mimcast.models.mimnet import STEP_SCALE, MIMNetConfig
    from mimcast.models.train import TrainConfig
    from mimcast.pipeline.packs import PackConfig, PackDataset, build_pack
    from mimcast.pipeline.sequences import SequenceConfig
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube
    from mimcast.pipeline.training import RunConfig, train_from_pack

    stores = []
    for name, step in (("two", 2), ("five", 5)):
        cube = synthetic_cube(SyntheticConfig(height=64, width=64, frames=40, seed=3,
                                              wind_u=15.0, step_minutes=step))  # fmt: skip
        cube.to_zarr(tmp_path / f"{name}.zarr", consolidated=False)
        stores.append(tmp_path / f"{name}.zarr")
    pack = build_pack(stores, tmp_path / "pack.npz",
                      PackConfig(n_inputs=4, n_outputs=6, patch=32, stride=16,
                                 min_coverage=0.01, min_step_minutes=4),
                      progress=False)  # fmt: skip
    items = PackDataset(pack, "train", with_step=True)
    seen = {int(k): float(items[j][2]) for j, (k, *_) in enumerate(items.items)}
    assert seen == {0: 4.0, 1: 5.0}  # 2-minute frames read every other one; 5 as they are
    assert len(PackDataset(pack, "train")[0]) == 2  # without with_step: (frames, valid)

    model = MIMNetConfig(input_length=4, output_length=6, num_layers=2, num_hidden=8,
                         filter_size=3, residual=True, step_input=True)  # fmt: skip
    data = SequenceConfig(input_length=4, output_length=6, frame="lagrangian", patch=32,
                          min_step_minutes=4)  # fmt: skip
    train = TrainConfig(device="cpu", max_steps=3, batch_size=4, val_every=3, val_batches=1,
                        warmup_steps=1)  # fmt: skip
    result = train_from_pack(pack, tmp_path / "run", RunConfig(model, data, train),
                             progress=False)  # fmt: skip
    fc = MIMNetForecaster(checkpoint=str(result.best), device="cpu", min_step_minutes=4)
    net = fc.loaded.model
    assert net.config.step_input and net.step_gates.weight.abs().sum() > 0  # it trained
    assert fc.loaded.inputs.pixel_m == 1000.0  # the training cubes' grid spacing, recorded
    fed = []
    hook = net.step_gates.register_forward_hook(lambda m, args, out: fed.append(args[0]))
    inputs = synthetic_cube(SyntheticConfig(height=64, width=64, frames=12, seed=4,
                                            step_minutes=2))["reflectivity"].values  # fmt: skip
    try:
        out = fc.at_time_step(2)(inputs, 12)
        assert out.shape == (12, 64, 64)
        # the model reads every other 2-minute frame: its step is 4 minutes
        torch.testing.assert_close(fed[-1][0, 0], torch.tensor(4.0 / STEP_SCALE))
        fc.at_time_step(10)(inputs[-4:], 6)
        torch.testing.assert_close(fed[-1][0, 0], torch.tensor(10.0 / STEP_SCALE))
        with pytest.raises(ValueError, match="time step"):
            MIMNetForecaster(checkpoint=str(result.best), device="cpu")(inputs[-4:], 6)
        # a hindcast knows the cube's step and gives it to the methods it scores
        from mimcast.pipeline.verify import VerifyOptions, hindcast, reference_times

        cube = synthetic_cube(SyntheticConfig(height=64, width=64, frames=24, seed=5,
                                              step_minutes=2))  # fmt: skip
        n_in = fc.at_time_step(2).input_frames
        refs = reference_times(cube, n_in, 6)[:1]
        bare = MIMNetForecaster(checkpoint=str(result.best), device="cpu", min_step_minutes=4)
        scores = hindcast(cube, refs, n_in, 6, 2, {"mimnet": bare}, VerifyOptions(),
                          scheduler="synchronous")  # fmt: skip
        assert {r["lead_time"] for r in scores.table()} == {2, 4, 6, 8, 10, 12}
        torch.testing.assert_close(fed[-1][0, 0], torch.tensor(4.0 / STEP_SCALE))
    finally:
        hook.remove()
