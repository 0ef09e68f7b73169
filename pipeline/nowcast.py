"""Nowcast: run a trained MIMNet over a cube at a reference time, on the full domain.

Contract
--------
:func:`nowcast` takes a radar cube and a model (``models.mimnet.MIMNet``) and returns a
forecast dataset: ``reflectivity`` (dBZ), ``rainfall_rate`` (mm/h) and
``precipitation_amount`` (mm accumulated since the reference time) on dims
``(time, y, x)`` where ``time`` is the valid time of each lead, with the scalar
``forecast_reference_time``, the ``forecast_period`` coordinate, the cube's ``x``/``y`` and
``crs``. The reference time is the latest one whose ``input_length`` frames are all observed
(``"latest"``) or a given time; a missing or gap frame among the inputs raises
:class:`NowcastError` naming the missing times.

Grids larger than ``max_pixels`` are cut into overlapping tiles, run one at a time and blended
with linear ramps over the overlap, so memory stays bounded whatever the domain.
Pixels without data in the last observed frame are NaN in every lead time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from pipeline.cube import GRID_MAPPING, NO_ECHO_DBZ, VARIABLE
from pipeline.products import MARSHALL_PALMER, ZR, accumulate, dbz_to_rate
from pipeline.sequences import Normalizer


class NowcastError(ValueError):
    """The cube cannot feed a nowcast at the requested time; the message names the frames."""


@dataclass(frozen=True)
class NowcastOptions:
    """How a nowcast is run."""

    time: str = "latest"  # reference time (ISO 8601, UTC) or "latest"
    max_pixels: int = 1024 * 1024  # grids with more pixels are tiled (memory budget)
    tile: int = 512  # tile side in pixels
    overlap: int = 64  # overlap between tiles in pixels (blended)
    echo_threshold_dbz: float = 5.0  # weaker predicted reflectivity is "no echo"
    rain_threshold_dbz: float = 10.0  # weaker reflectivity gives no rain
    zr: ZR | None = None  # Z-R for products; None: the cube's (zr_a/zr_b) or Marshall-Palmer
    device: str = "auto"  # "auto": CUDA when present, else CPU
    bf16: bool = False  # bf16 autocast for inference


def step_minutes(cube: xr.Dataset) -> int:
    """Return the cube's time step in minutes."""
    step = int(cube.attrs.get("time_step_minutes") or 0)
    if not step:
        if cube.sizes["time"] < 2:
            raise NowcastError("cannot tell the time step of a one-frame cube")
        step = int(np.diff(cube.time.values[:2])[0] / np.timedelta64(1, "m"))
    return step


def input_times(cube: xr.Dataset, n_inputs: int, when: str = "latest") -> np.ndarray:
    """Return the ``n_inputs`` input times ending at the reference time ``when``."""
    step = np.timedelta64(step_minutes(cube), "m")
    times = cube.time.values.astype("datetime64[m]")
    observed = cube["observed"].values if "observed" in cube else np.ones(times.size, bool)
    available = times[observed]
    if when == "latest":
        for ref in available[::-1]:
            wanted = ref - step * np.arange(n_inputs - 1, -1, -1)
            if np.isin(wanted, available).all():
                return wanted
        raise NowcastError(
            f"no reference time in the cube has {n_inputs} consecutive observed frames "
            f"(cube: {times.size} frames, {int((~observed).sum())} gaps)"
        )
    try:
        ref = np.datetime64(when.replace("Z", ""), "m")
    except ValueError as err:
        raise NowcastError(f"reference time {when!r} is not ISO 8601") from err
    wanted = ref - step * np.arange(n_inputs - 1, -1, -1)
    missing = [str(t) for t in wanted[~np.isin(wanted, available)]]
    if missing:
        kind = "missing or gaps" if np.isin(ref, times) else "outside the cube"
        raise NowcastError(
            f"cannot nowcast from {ref}: input frames {', '.join(missing)} are {kind} "
            f"(the model needs {n_inputs} frames at {step_minutes(cube)}-minute steps)"
        )
    return wanted


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    w = np.ones(n, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if not at_start:
            w[:overlap] = ramp[: min(overlap, n)]
        if not at_end:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1][: min(overlap, n)])
    return w


def tile_slices(size: int, tile: int, overlap: int) -> list[slice]:
    """Return overlapping slices of length ``tile`` covering ``range(size)``."""
    if size <= tile:
        return [slice(0, size)]
    stride = tile - overlap
    starts = [*range(0, size - tile, stride), size - tile]
    return [slice(s, s + tile) for s in sorted(set(starts))]


def predict(model, frames: np.ndarray, options: NowcastOptions) -> np.ndarray:
    """Run ``model`` on normalised ``frames`` ``(T_in, H, W)``; return ``(T_out, H, W)`` in [0, 1].

    Tiles when ``H * W`` exceeds ``options.max_pixels``.
    """
    import torch

    from models.mimnet import autocast

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto"
        else options.device
    )  # fmt: skip
    model = model.to(device).eval()
    n_out = model.config.output_length
    _, height, width = frames.shape

    def run(block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(block))[None, :, None].to(device)
        with torch.inference_mode(), autocast(device, enabled=options.bf16):
            y = model(x)  # (1, T_out, 1, h, w)
        return y[0, :, 0].float().clamp(0, 1).cpu().numpy()

    if height * width <= options.max_pixels:
        return run(frames)
    acc = np.zeros((n_out, height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    rows = tile_slices(height, options.tile, options.overlap)
    cols = tile_slices(width, options.tile, options.overlap)
    for r in rows:
        wr = _ramp(r.stop - r.start, options.overlap, r.start == 0, r.stop == height)
        for c in cols:
            wc = _ramp(c.stop - c.start, options.overlap, c.start == 0, c.stop == width)
            w = np.outer(wr, wc)
            acc[:, r, c] += run(frames[:, r, c]) * w
            weight[r, c] += w
    return acc / weight


def nowcast(
    cube: xr.Dataset,
    model,
    options: NowcastOptions | None = None,
    *,
    normalizer: Normalizer | None = None,
    source: str = "mimcast",
) -> xr.Dataset:
    """Return the forecast dataset for ``cube`` at ``options.time`` (see module docstring)."""
    options = options or NowcastOptions()
    normalizer = normalizer or Normalizer()
    n_in, n_out = model.config.input_length, model.config.output_length
    wanted = input_times(cube, n_in, options.time)
    step = step_minutes(cube)
    inputs = cube[VARIABLE].sel(time=wanted.astype("datetime64[ns]")).values  # (T_in, H, W)
    x, _ = normalizer.normalize(inputs)
    pred = predict(model, x, options)  # (T_out, H, W)
    dbz = normalizer.denormalize(pred).astype(np.float32)
    dbz[dbz < options.echo_threshold_dbz] = NO_ECHO_DBZ
    nodata = np.isnan(inputs[-1])
    dbz[:, nodata] = np.nan

    refl_attrs = cube[VARIABLE].attrs
    zr = options.zr or (
        ZR(float(refl_attrs["zr_a"]), float(refl_attrs["zr_b"]))
        if "zr_a" in refl_attrs and "zr_b" in refl_attrs
        else MARSHALL_PALMER
    )
    rate = dbz_to_rate(dbz, zr, options.rain_threshold_dbz).astype(np.float32)
    amount = accumulate(rate, step).astype(np.float32)
    reference = wanted[-1].astype("datetime64[ns]")
    lead = np.arange(1, n_out + 1) * step
    valid_times = reference + lead.astype("timedelta64[m]").astype("timedelta64[ns]")
    attrs: dict[str, Any] = {"zr_a": zr.a, "zr_b": zr.b}
    ds = xr.Dataset(
        {
            "reflectivity": (("time", "y", "x"), dbz, {
                "standard_name": "equivalent_reflectivity_factor", "long_name":
                "forecast equivalent reflectivity factor", "units": "dBZ",
                "grid_mapping": GRID_MAPPING}),
            "rainfall_rate": (("time", "y", "x"), rate, {
                "standard_name": "rainfall_rate", "long_name": "forecast rain rate",
                "units": "mm h-1", "grid_mapping": GRID_MAPPING,
                "comment": f"Z = {zr.a:g} R^{zr.b:g}; 0 below {options.rain_threshold_dbz:g} dBZ",
                **attrs}),
            "precipitation_amount": (("time", "y", "x"), amount, {
                "standard_name": "precipitation_amount",
                "long_name": "precipitation accumulated since the reference time",
                "units": "kg m-2", "grid_mapping": GRID_MAPPING}),
        },
        coords={
            "time": ("time", valid_times, {"standard_name": "time", "long_name": "valid time",
                                           "axis": "T"}),
            "forecast_period": ("time", lead.astype(np.int32), {
                "standard_name": "forecast_period", "long_name": "lead time", "units": "minutes"}),
            "forecast_reference_time": ((), reference, {
                "standard_name": "forecast_reference_time",
                "long_name": "time of the last observed input frame"}),
            "y": cube.y, "x": cube.x, GRID_MAPPING: cube[GRID_MAPPING],
        },
        attrs={"source": source, "input_times": ", ".join(str(t) for t in wanted),
               "time_step_minutes": step},
    )  # fmt: skip
    return ds
