"""The forecaster registry: every forecast method behind one signature.

Contract
--------
A forecaster is a named, picklable callable ``forecaster(inputs, n_leads) -> dBZ``: ``inputs``
is ``(T, H, W)`` reflectivity in dBZ (NaN: no data; the last frame is the reference time),
the result is ``(n_leads, H, W)`` dBZ at lead steps 1..``n_leads``. NaN in the result means
"unknown" (outside the radar coverage of the last frame, or advected in from outside the
grid); never "no rain". Each forecaster also says how many input frames it reads
(``input_frames``), how many leads it can make (``max_leads``, None: any) and its default
(``default_leads``).

A forecaster may also adapt to the archive's time step: :func:`at_time_step` hands it the
cube's step in minutes before any of the above is read (nowcast, evaluate and loao do so);
a forecaster without an ``at_time_step`` method is used as it is. On archives with steps
shorter than ``min_step_minutes`` MIMNet uses it to run on every k-th frame, and
extrapolation and S-PROG to estimate their motion on every k-th frame. Likewise
:func:`at_pixel_size` hands it the cube's grid spacing; :func:`for_cube` does both.

:func:`get_forecaster` builds one by name (an unknown name raises ``ValueError`` listing the
known ones); :func:`list_forecasters` lists the names. Nowcast, evaluate, the CLI and the
flows all take their methods from here. A new method is one class plus one
:func:`register` line here, or an entry point in the ``mimcast.forecasters`` group of
another package (a class taking keyword options).

The built-in methods:

- ``persistence``: the last frame, unchanged.
- ``extrapolation``: pysteps Lucas-Kanade motion + semi-Lagrangian advection of the last frame.
- ``sprog``: pysteps S-PROG (cascade decomposition, scale-dependent AR(2) smoothing).
- ``mimnet``: a trained checkpoint (the shipped one by default). The checkpoint says whether
  it runs in the Eulerian frame or the Lagrangian one (inputs moved with the motion field,
  outputs advected forward along it) and which post-processing it uses by default. On
  archives with steps shorter than ``min_step_minutes`` (4) it reads every k-th frame and
  fills the archive-step leads between its steps (see :meth:`MIMNetForecaster._raw`). On
  archives coarser than its training grids it runs on a finer grid (:func:`auto_refine`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mimcast.pipeline.defaults import (
    DEFAULT_LEADS,
    ECHO_THRESHOLD_DBZ,
    FLOOR_DBZ,
    MIN_STEP_MINUTES,
    MOTION_FRAMES,
    POSTPROCESS,
    RAIN_THRESHOLD_DBZ,
    SHIPPED_CHECKPOINT,
)
from mimcast.pipeline.zr import NO_ECHO_DBZ, coarsen_dbz

#: redirect_stdout swaps the process-wide sys.stdout: threads must take turns around it
STDOUT_LOCK = threading.Lock()


@functools.cache
def pysteps():
    """Import pysteps once, without its banner on stdout."""
    with STDOUT_LOCK, contextlib.redirect_stdout(io.StringIO()):
        import pysteps
        import pysteps.extrapolation.semilagrangian
        import pysteps.motion
        import pysteps.nowcasts
        import pysteps.postprocessing.probmatching
        import pysteps.verification.detcatscores
        import pysteps.verification.spatialscores
    return pysteps


def motion_field(
    inputs: np.ndarray, motion_frames: int = MOTION_FRAMES, max_side: int | None = None
) -> np.ndarray:
    """Return the Lucas-Kanade motion ``(2, H, W)`` (pixels per step; x, y) of the last frames.

    ``max_side``: estimate on a grid block-averaged until its longer side is at most this many
    pixels, then scale back (cheaper on huge grids, but too coarse for slow echoes at short
    steps). None: on the full grid, as pysteps does. Results are cached per process for the
    last few inputs, so every method forecasting from the same frames shares one estimate.
    """
    if inputs.shape[0] < 2:
        raise ValueError(f"motion needs at least 2 input frames, got {inputs.shape[0]}")
    frames = np.ascontiguousarray(inputs[-motion_frames:], dtype=np.float32)
    key = (hashlib.blake2b(frames.tobytes(), digest_size=16).hexdigest(), frames.shape,
           max_side)  # fmt: skip
    cached = _MOTION.get(key)
    if cached is not None:
        return cached
    field_ = np.nan_to_num(np.maximum(frames, FLOOR_DBZ), nan=FLOOR_DBZ)
    _, height, width = field_.shape
    factor = 1 if max_side is None else max(1, -(-max(height, width) // max_side))
    if factor > 1:
        from mimcast.pipeline.packs import block_mean

        field_ = block_mean(field_, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        velocity = lucas_kanade(field_)
    velocity = np.nan_to_num(np.asarray(velocity, dtype=np.float32))
    if factor > 1:
        velocity = np.repeat(np.repeat(velocity, factor, axis=1), factor, axis=2) * factor
        velocity = _smooth(velocity[:, :height, :width], factor)
    velocity.flags.writeable = False
    _MOTION[key] = velocity
    while len(_MOTION) > 4:
        _MOTION.pop(next(iter(_MOTION)), None)
    return velocity


#: Recent motion estimates (see motion_field).
_MOTION: dict[tuple, np.ndarray] = {}


#: pysteps' dense Lucas-Kanade defaults that :func:`lucas_kanade` repeats: sparse vectors within
#: this many pixels are merged (``decl_scale``), and each pixel takes the inverse-distance
#: weights of its nearest vectors (``idwinterp2d``: k, power, offset in pixels).
DECLUSTER_PX, IDW_NEIGHBOURS, IDW_POWER, IDW_OFFSET_PX = 20, 20, 0.5, 0.5

#: Pixels per band of the dense interpolation: each band's arrays (k neighbours a pixel) stay
#: in cache-sized pieces of about 10 MB, and bands run on all cores.
IDW_BAND_PIXELS = 65536


def lucas_kanade(frames: np.ndarray) -> np.ndarray:
    """pysteps' dense Lucas-Kanade motion ``(2, H, W)`` of ``frames`` ``(T, H, W)``, bit for bit.

    pysteps tracks sparse features, removes outliers, declusters the vectors and interpolates
    them to every pixel by inverse distance weighting (IDW) of the 20 nearest. The last step
    dominates on large grids (about 70 of 73 s on OPERA CIRRUS's 4400 x 3800, 2 cores) and
    pysteps runs it on one core, a quarter of the grid at a time (4.8 GB at that size);
    :func:`idw_dense` computes the same sums, operation for operation, in bands of rows on
    every core (21 s, 0.3 GB: ``bench/motion.py``). The sparse part is pysteps' own
    (``dense=False``).
    """
    ps = pysteps()
    shape = frames.shape[1:]
    xy, uv = ps.motion.lucaskanade.dense_lucaskanade(frames, dense=False, verbose=False)
    if xy.shape[0] == 0:  # no features, or none tracked: no motion, as pysteps returns
        return np.zeros((2, *shape))
    xy, uv = ps.utils.cleansing.decluster(xy, uv, DECLUSTER_PX, 1, False)
    if xy.shape[0] == 0:
        return np.zeros((2, *shape))
    return idw_dense(xy, uv, shape)


def idw_dense(
    xy: np.ndarray, values: np.ndarray, shape: tuple[int, int], workers: int | None = None
) -> np.ndarray:
    """``pysteps.utils.interpolate.idwinterp2d(xy, values, arange(W), arange(H))``, the same bits.

    ``xy`` ``(n, 2)`` are (x, y) pixel coordinates, ``values`` ``(n, m)``; returns ``(m, H, W)``.
    Every pixel's result depends on that pixel alone (its nearest points in one k-d tree, then
    the same float64 operations in the same order), so rows are done in bands, ``workers`` at
    a time (default: one per core), with the tree's queries and NumPy releasing the GIL.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scipy.spatial import cKDTree

    height, width = shape
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    nvar = values.shape[1]
    if len(values) == 1 or values.max() == values.min():  # pysteps' uniform outputs
        return np.ones((nvar, height, width)) * values[0][:, None, None]
    tree = cKDTree(xy)
    k = min(IDW_NEIGHBOURS, len(values))
    out = np.empty((nvar, height, width))
    rows = max(1, IDW_BAND_PIXELS // width)

    def band(top: int) -> None:
        bottom = min(height, top + rows)
        xs, ys = np.meshgrid(np.arange(width), np.arange(top, bottom))
        dist, inds = tree.query(np.column_stack((xs.ravel(), ys.ravel())), k=k)
        dist += IDW_OFFSET_PX  # pysteps first divides by the grid step, 1 pixel here
        weights = 1 / np.power(dist, IDW_POWER)
        weights = weights / np.sum(weights, axis=1, keepdims=True)
        band_values = np.sum(values[inds, :] * weights[..., None], axis=1)
        out[:, top:bottom] = np.moveaxis(band_values.reshape(bottom - top, width, nvar), -1, 0)

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(band, range(0, height, rows)))
    return out


def _smooth(velocity: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return np.stack([uniform_filter(v, size, mode="nearest") for v in velocity]).astype(np.float32)


#: Longer grid side on which the model's motion is estimated (see :func:`motion_field`): None,
#: the full grid, the same estimate as the extrapolation baseline's. (512 was measured to be
#: too coarse: on MRMS at 2-minute steps the model then lost to persistence.)
MODEL_MOTION_SIDE: int | None = None


def stable_order(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` for finite float32 values, about 6x faster.

    Each value's bits are mapped to an unsigned integer of the same order (negative values
    inverted, positive ones with the sign bit set; -0.0 counted as +0.0) and packed above its
    index into one uint64 key, so that one unstable numeric sort of the keys gives the stable
    order: equal values stay in index order.
    """
    bits = (np.asarray(values, dtype=np.float32).ravel() + np.float32(0.0)).view(np.uint32)
    keys = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64) << 32
    keys |= np.arange(bits.size, dtype=np.uint64)
    keys.sort()
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


def probability_match(
    forecast: np.ndarray, reference: np.ndarray, wet_dbz: float | None = None
) -> np.ndarray:
    """Give every lead of ``forecast`` the value distribution of ``reference`` (rank by rank).

    Pixels keep their rank within the lead and take the reference's value of that rank (its
    empirical quantiles, resampled to the number of forecast pixels), as pysteps' empirical
    CDF matching does for S-PROG. NaN (unknown) pixels stay NaN and are left out.

    ``reference``: one field ``(H, W)`` for every lead, or one per lead ``(T, H, W)``; a lead's
    own reference counts only where that lead's forecast is known as well.

    ``wet_dbz``: match only the rain. Each lead keeps its own area >= ``wet_dbz`` (where the
    forecast grows or shrinks the rain, it stays so), and the values inside it take the
    distribution of the reference's values >= ``wet_dbz``; weaker pixels are left as they are.
    None: the whole field, so every lead also takes the reference's rain area.
    """

    def distribution(values: np.ndarray) -> np.ndarray:
        if wet_dbz is not None:
            values = values[values >= wet_dbz]
        return np.sort(np.maximum(values, FLOOR_DBZ))

    per_lead = reference.ndim == 3
    if per_lead and reference.shape != forecast.shape:
        raise ValueError(f"per-lead reference {reference.shape} for a forecast {forecast.shape}")
    ref = None if per_lead else distribution(reference[np.isfinite(reference)])
    out = np.array(forecast, dtype=np.float32, copy=True)
    for k in range(out.shape[0]):
        if per_lead:
            ref = distribution(reference[k][np.isfinite(reference[k]) & np.isfinite(out[k])])
        if ref.size == 0:
            continue
        ok = np.isfinite(out[k])
        if wet_dbz is not None:
            ok &= out[k] >= wet_dbz
        n = int(ok.sum())
        if n < 2:
            continue
        values = out[k][ok]
        target = np.interp((np.arange(n) + 0.5) / n * ref.size - 0.5, np.arange(ref.size), ref)
        matched = np.empty(n, dtype=np.float32)
        matched[stable_order(values)] = target
        out[k][ok] = matched
    return out


# --------------------------------------------------------------------------------------------
# the methods


class _ReadsEveryKthFrame:
    """Shared by methods that read every k-th frame of archives with short steps.

    The dataclasses using it declare ``min_step_minutes`` and ``time_step_minutes`` (their own
    fields, so that their argument order stays theirs); :func:`at_time_step` sets the latter.
    """

    min_step_minutes: float
    time_step_minutes: float | None

    def _check_steps(self) -> None:
        if not 0 <= self.min_step_minutes < math.inf:
            raise ValueError(f"min_step_minutes={self.min_step_minutes}: must be >= 0 and finite")
        if self.time_step_minutes is not None and not self.time_step_minutes > 0:
            raise ValueError(f"time_step_minutes={self.time_step_minutes}: must be > 0")

    def at_time_step(self, minutes: float):
        """This method for an archive with ``minutes`` between frames."""
        return dataclasses.replace(self, time_step_minutes=float(minutes))

    @property
    def stride(self) -> int:
        """Archive frames per step read: the fewest that span ``min_step_minutes``."""
        return frame_stride(self.time_step_minutes, self.min_step_minutes)


@dataclass
class Persistence:
    """The last observed frame at every lead."""

    name: ClassVar[str] = "persistence"
    description: ClassVar[str] = "the last observed frame, unchanged"
    input_frames: int = 1
    max_leads: int | None = None
    default_leads: int = DEFAULT_LEADS

    def __call__(self, inputs: np.ndarray, n_leads: int) -> np.ndarray:
        return np.repeat(np.asarray(inputs[-1:], dtype=np.float32), n_leads, axis=0)


@dataclass
class _MotionMethod(_ReadsEveryKthFrame):
    """A method driven by the Lucas-Kanade motion of ``motion_frames`` inputs.

    On archives with steps shorter than ``min_step_minutes`` the motion is estimated on every
    k-th frame (the frames then span at least ``min_step_minutes`` per step, as MIMNet's do)
    and scaled back to pixels per archive step: at sub-pixel displacements per step
    Lucas-Kanade is noisy (see ``MIN_STEP_MINUTES``).
    """

    motion_frames: int = MOTION_FRAMES
    max_leads: int | None = None
    default_leads: int = DEFAULT_LEADS
    min_step_minutes: float = MIN_STEP_MINUTES
    time_step_minutes: float | None = None  # the archive's step (at_time_step); None: unknown

    def __post_init__(self) -> None:
        self._check_steps()

    @property
    def motion_span(self) -> int:
        """Archive frames from the first motion frame to the last input, inclusive."""
        return (self.motion_frames - 1) * self.stride + 1

    @property
    def input_frames(self) -> int:
        return self.motion_span

    def velocity(self, inputs: np.ndarray) -> np.ndarray:
        """Motion ``(2, H, W)`` in pixels per archive step (see the class docstring)."""
        span, stride = self.motion_span, self.stride
        if inputs.shape[0] < span:
            raise ValueError(f"{self.name}: needs {span} input frames, got {inputs.shape[0]}")
        velocity = motion_field(inputs[-span::stride], self.motion_frames)
        return velocity if stride == 1 else velocity / np.float32(stride)


@dataclass
class Extrapolation(_MotionMethod):
    """pysteps Lucas-Kanade motion, semi-Lagrangian advection of the last frame."""

    name: ClassVar[str] = "extrapolation"
    description: ClassVar[str] = "pysteps Lucas-Kanade motion + semi-Lagrangian advection"

    def __call__(self, inputs: np.ndarray, n_leads: int) -> np.ndarray:
        velocity = self.velocity(inputs)
        last = np.nan_to_num(np.maximum(inputs[-1], FLOOR_DBZ), nan=FLOOR_DBZ)
        extrap = pysteps().nowcasts.get_method("extrapolation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pixels advected in from outside the grid are unknown (NaN), not "no rain"
            out = extrap(last, velocity, n_leads, extrap_kwargs={"outval": np.nan})
        return _mark_no_data(np.asarray(out, dtype=np.float32), inputs[-1])


@dataclass
class SProg(_MotionMethod):
    """pysteps S-PROG: cascade decomposition with scale-dependent AR(2) smoothing."""

    name: ClassVar[str] = "sprog"
    description: ClassVar[str] = "pysteps S-PROG (spectral cascade, AR(2) per scale)"

    #: S-PROG's AR(2) model of each cascade level reads the last 3 frames at the archive's step
    ar_order: ClassVar[int] = 2

    @property
    def input_frames(self) -> int:
        return max(self.motion_span, self.ar_order + 1)

    def __call__(self, inputs: np.ndarray, n_leads: int) -> np.ndarray:
        velocity = self.velocity(inputs)
        field_ = np.nan_to_num(np.maximum(inputs[-self.ar_order - 1 :], FLOOR_DBZ), nan=FLOOR_DBZ)
        # S-PROG prints its configuration: silence it, one thread at a time
        with STDOUT_LOCK, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            out = pysteps().nowcasts.get_method("sprog")(
                field_, velocity, n_leads, precip_thr=RAIN_THRESHOLD_DBZ, n_cascade_levels=6,
                measure_time=False, ar_order=self.ar_order,
            )  # fmt: skip
        out = np.asarray(out, dtype=np.float32)  # NaN where advected in from outside
        return _mark_no_data(out, inputs[-1])


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int):
    from mimcast.models.checkpoint import open_checkpoint

    return open_checkpoint(path)


def load_checkpoint_cached(path: str | Path):
    """Open a checkpoint once per process (re-read when the file changes)."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0  # let open_checkpoint name the problem
    return _load(str(path), stamp)


@dataclass
class MIMNetForecaster(_ReadsEveryKthFrame):
    """A trained model from a checkpoint: dBZ in, dBZ out, as its checkpoint says."""

    name: ClassVar[str] = "mimnet"
    description: ClassVar[str] = "MIMNet from a checkpoint (default: the shipped one)"
    checkpoint: str | None = None  # safetensors checkpoint; None: the shipped model
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    bf16: bool | None = None  # bf16 autocast; None: where it pays (models.device.inference_bf16)
    postprocess: str | None = None  # one of POSTPROCESS; None: the checkpoint's default
    max_pixels: int = 1024 * 1024  # grids with more pixels run in tiles
    tile: int = 512
    overlap: int = 64
    echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ  # weaker predictions are "no echo"
    # a model step spans at least this many minutes: on archives with shorter steps the model
    # reads every k-th frame and the leads between its steps are interpolated (0: every frame)
    min_step_minutes: float = MIN_STEP_MINUTES
    time_step_minutes: float | None = None  # the archive's step (at_time_step); None: unknown
    # the model runs on a grid this many times finer (each pixel repeated), and its forecast
    # is averaged back to the archive's pixels in linear Z; None: auto_refine of the archive's
    # pixel size (at_pixel_size) and the checkpoint's training grid
    refine: int | None = None
    pixel_m: float | None = None  # the archive's grid spacing (at_pixel_size); None: unknown
    preloaded: Any = field(default=None, repr=False)  # a Checkpoint in memory (from_model)

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            self.checkpoint = str(SHIPPED_CHECKPOINT) if self.preloaded is None else "in memory"
        if self.postprocess is not None and self.postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess={self.postprocess!r}: one of {', '.join(POSTPROCESS)}")
        if self.refine is not None:
            if (isinstance(self.refine, bool) or int(self.refine) != self.refine
                    or self.refine < 1):  # fmt: skip
                raise ValueError(f"refine={self.refine!r}: a whole number >= 1, or None")
            self.refine = int(self.refine)
        self._check_steps()

    @classmethod
    def from_model(cls, model, inputs=None, **options: Any) -> MIMNetForecaster:
        """Wrap an in-memory model; ``inputs`` (an ``InputConfig``) default: 0-70 dBZ Eulerian."""
        from mimcast.models.checkpoint import Checkpoint, InputConfig

        inputs = inputs or InputConfig(0.0, 70.0)
        ckpt = Checkpoint(Path("in memory"), type(model).__name__, model.eval(), inputs, {}, "")
        return cls(preloaded=ckpt, **options)

    @property
    def loaded(self):
        """The :class:`~mimcast.models.checkpoint.Checkpoint` (cached per process)."""
        if self.preloaded is not None:
            return self.preloaded
        return load_checkpoint_cached(self.checkpoint)

    @property
    def input_frames(self) -> int:
        return (self.loaded.model.config.input_length - 1) * self.stride + 1

    def at_pixel_size(self, metres: float | None):
        """This model for an archive whose pixels are ``metres`` apart."""
        return dataclasses.replace(self, pixel_m=metres)

    @property
    def grid_refine(self) -> int:
        """How many times finer than the archive's the grid the model runs on is."""
        if self.refine is not None:
            return self.refine
        return auto_refine(self.pixel_m, self.loaded.inputs.pixel_m)

    @property
    def max_leads(self) -> int:
        return self.loaded.model.config.output_length * self.stride

    @property
    def default_leads(self) -> int:
        return self.max_leads

    def describe(self) -> str:
        """One line naming the checkpoint, its frame and post-processing."""
        ckpt = self.loaded
        post = self.postprocess or ckpt.inputs.postprocess
        every = ""
        if self.stride > 1:
            every = (f", every {self.stride} frames: {self.stride * self.time_step_minutes:g}-"
                     "minute model steps")  # fmt: skip
        r = self.grid_refine
        finer = f", on a {r}x finer grid" if r > 1 else ""
        steps = ckpt.extra.get("averaged_steps")  # from 'mimcast average'
        step = (f"steps {steps[0]}-{steps[-1]} averaged" if steps
                else f"step {ckpt.extra.get('step', '?')}")  # fmt: skip
        return (f"{Path(self.checkpoint).name} ({step}, {ckpt.inputs.frame}, post-processing "
                f"{post}{every}{finer})")  # fmt: skip

    def __call__(self, inputs: np.ndarray, n_leads: int) -> np.ndarray:
        ckpt = self.loaded
        spec = ckpt.inputs
        n_in, stride = self.input_frames, self.stride
        if inputs.shape[0] < n_in:
            raise ValueError(f"{self.checkpoint}: needs {n_in} input frames, got {inputs.shape[0]}")
        if n_leads > self.max_leads:
            raise ValueError(
                f"{self.checkpoint}: predicts {self.max_leads} lead steps, {n_leads} asked"
            )
        inputs = np.asarray(inputs[-n_in:], dtype=np.float32)
        steps = -(-n_leads // stride)  # model steps that reach the last lead asked for
        key = (str(self.checkpoint), id(ckpt), hashlib.blake2b(inputs.tobytes(), digest_size=16)
               .hexdigest(), self.device, self.bf16, stride, self.time_step_minutes,
               self.grid_refine, steps)  # fmt: skip
        post = self.postprocess or spec.postprocess
        r = self.grid_refine
        # on the archive's grid, pm-advected's reference moves along the forecast's own
        # trajectories: integrated once for both
        carry = post == "pm-advected" and spec.frame == "lagrangian" and r == 1
        raw, moved = _RAW.get(key), None  # the moved reference is not cached: not held
        if raw is None:  # while the products are written (a cache hit: _advected_last)
            raw, moved = self._raw(ckpt, refined(inputs[::stride], r), stride, steps, carry)
            if r > 1:  # back to the archive's pixels
                raw = coarsen_dbz(raw, r)
            _RAW[key] = raw  # variants of one model at one reference time share it
            while len(_RAW) > 4:  # a few entries: dask threads score several references
                _RAW.pop(next(iter(_RAW)), None)
        dbz = _mark_no_data(raw[:n_leads].copy(), inputs[-1])  # before matching: same pixels
        if post != "none":
            wet = None if post == "pm" else RAIN_THRESHOLD_DBZ
            reference = inputs[-1]
            if post == "pm-advected":
                reference = (self._advected_last(spec, inputs[::stride], stride, n_leads)
                             if moved is None else moved[:n_leads])  # fmt: skip
            dbz = probability_match(dbz, reference, wet)
        dbz = np.where(np.isfinite(dbz) & (dbz < self.echo_threshold_dbz), NO_ECHO_DBZ, dbz)
        return _mark_no_data(dbz.astype(np.float32), inputs[-1])

    @staticmethod
    def _advected_last(spec, inputs: np.ndarray, stride: int, n_leads: int) -> np.ndarray:
        """The last of ``inputs`` (one model step apart) moved along their motion to each of
        ``n_leads`` archive steps ``(n_leads, H, W)``, NaN where it comes from outside the grid
        or from no data: ``pm-advected``'s reference. On the archive's grid; the motion is the
        one a Lagrangian model works in there (shared through motion_field's cache). Values
        are moved to the nearest pixel, so the reference holds only observed values (``_raw``
        moves it with the forecast instead where the model runs on the archive's grid)."""
        import torch

        from mimcast.models.advection import extrapolate

        velocity = motion_field(inputs, spec.motion_frames, MODEL_MOTION_SIDE) / stride
        field_, valid = _movable(inputs[-1])
        out = np.empty((n_leads, *inputs.shape[1:]), dtype=np.float32)
        # each pixel takes the value of the pixel it comes from, not a mean of four: a
        # bilinear move would smooth the reference's cores, and with them the matched rain
        moved = extrapolate(field_, valid, torch.from_numpy(velocity.copy())[None], n_leads,
                            mode="nearest")  # fmt: skip
        for k, (values, ok) in enumerate(moved):
            out[k] = np.where(ok[0, 0].numpy() > 0, values[0, 0].numpy(), np.nan)
        return out

    def _raw(
        self,
        ckpt,
        inputs: np.ndarray,
        stride: int = 1,
        steps: int | None = None,
        carry_last: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model output in dBZ on the Eulerian grid, before post-processing (NaN: unknown),
        and with ``carry_last`` (Lagrangian models) the last input moved along the same
        trajectories to every lead, as ``_advected_last`` gives it (else None).

        ``steps``: model steps to predict (default: the model's horizon; a recurrent model's
        first steps do not depend on the later ones, so fewer leads cost less).
        ``inputs`` are one model step apart; with ``stride`` > 1 that is ``stride`` archive
        steps, and the result has ``stride`` leads per model step: between two model steps
        the field is interpolated linearly in the frame the model works in (in the Lagrangian
        frame only growth and decay remain to interpolate; the motion is then applied per
        archive step).
        """
        import torch

        from mimcast.models.advection import from_lagrangian, to_lagrangian
        from mimcast.pipeline.nowcast import predict
        from mimcast.pipeline.sequences import Normalizer

        spec = ckpt.inputs
        n_in = inputs.shape[0]
        norm = Normalizer(spec.dbz_min, spec.dbz_max)
        x, valid = norm.normalize(inputs)  # (T, H, W) each
        velocity = None
        if spec.frame == "lagrangian":
            velocity = motion_field(inputs, spec.motion_frames, MODEL_MOTION_SIDE)
            velocity = torch.from_numpy(velocity.copy())[None]  # (1, 2, H, W)
            frames = torch.from_numpy(x)[None, :, None]  # (1, T, 1, H, W)
            lag, _ = to_lagrangian(frames, torch.from_numpy(valid)[None, :, None], velocity, n_in)
            x = lag[0, :, 0].numpy()
        step = None
        if getattr(ckpt.model.config, "step_input", False):
            if self.time_step_minutes is None:
                raise ValueError(
                    f"{self.checkpoint}: the model takes the archive's time step as an input, "
                    "and it is unknown here (at_time_step)"
                )
            step = self.time_step_minutes * stride
        pred = predict(ckpt.model, x, self, step, steps)  # (steps, H, W) in [0, 1]
        if stride > 1:
            pred = _interpolate_leads(x[-1], pred, stride)
            if velocity is not None:
                velocity = velocity / stride  # pixels per archive step
        known = np.ones_like(pred, dtype=bool)
        moved = None
        if velocity is not None:
            carry = _movable(inputs[-1]) if carry_last else None
            eul, ok, moved = from_lagrangian(torch.from_numpy(pred)[None, :, None], velocity,
                                             carry)  # fmt: skip
            known = ok[0, :, 0].numpy() > 0
            del ok  # a float per pixel and lead: gigabytes on the largest grids
            pred = eul[0, :, 0].numpy()
            moved = None if moved is None else moved[0, :, 0].numpy()
        dbz = norm.denormalize(pred).astype(np.float32, copy=False)
        dbz[~known] = np.nan
        return dbz, moved


def auto_refine(archive_m: float | None, training_m: float | None) -> int:
    """How many times finer than an archive's grid a model runs by default: the whole ratio
    of the archive's pixel size to the training grids' nearest to it, at least 1 (1 when
    either is unknown).

    Measured in data/MODEL_CARD.md ("The model's grid"): on held-out MRMS (4.4 km pixels, a
    model trained at 2 km) a twice finer grid gave higher CSI at 20 and 30 dBZ at all 24
    leads and lower MSE at 21. On 2-km archives it is not one-sided: higher CSI at the first
    leads on all four, then better on RMI and DWD YW, split on BoM cscn and worse on BoM c10,
    for 4x the arithmetic; there the model keeps the archive's grid (``refine=2`` asks for
    the finer one). Never coarser: a model trained at 2 km scored well on 1-km grids.
    """
    if not archive_m or not training_m:
        return 1
    return max(1, round(archive_m / training_m))


def at_pixel_size(forecaster, metres: float | None):
    """``forecaster`` adapted to an archive whose pixels are ``metres`` apart (a method
    without ``at_pixel_size`` is used as it is)."""
    adapt = getattr(forecaster, "at_pixel_size", None)
    return forecaster if adapt is None else adapt(metres)


def for_cube(forecaster, cube, step: float | None = None):
    """``forecaster`` adapted to ``cube``: its time step (``step`` overrides it) and its pixel
    size (:func:`at_time_step`, :func:`at_pixel_size`)."""
    from mimcast.pipeline.cube import pixel_metres, step_minutes

    minutes = step_minutes(cube) if step is None else step
    return at_pixel_size(at_time_step(forecaster, minutes), pixel_metres(cube))


def refined(frames: np.ndarray, factor: int) -> np.ndarray:
    """``(T, H, W)`` frames on a grid ``factor`` times finer: each pixel repeated
    ``factor`` x ``factor`` times, so that :func:`~mimcast.pipeline.zr.coarsen_dbz` gives
    them back exactly."""
    if factor == 1:
        return frames
    return np.repeat(np.repeat(frames, factor, axis=-2), factor, axis=-1)


def frame_stride(time_step_minutes: float | None, min_step_minutes: float) -> int:
    """Archive frames per model step: the fewest whose span is at least ``min_step_minutes``
    (1 when the archive's step is unknown or ``min_step_minutes`` is 0)."""
    if not time_step_minutes or not min_step_minutes:
        return 1
    return max(1, math.ceil(min_step_minutes / time_step_minutes - 1e-9))


#: The last raw model output (see MIMNetForecaster.__call__).
_RAW: dict[tuple, np.ndarray] = {}


def _interpolate_leads(last: np.ndarray, pred: np.ndarray, stride: int) -> np.ndarray:
    """``stride`` leads per model step: linear in time from ``last`` (lead 0) through ``pred``.

    Lead ``stride * i`` is ``pred[i - 1]`` exactly; the leads between are weighted means of
    the two model steps around them.
    """
    steps = np.concatenate([np.asarray(last, dtype=np.float32)[None], pred])  # lead 0..T_out
    out = np.empty((pred.shape[0] * stride, *pred.shape[1:]), dtype=np.float32)
    for j in range(1, out.shape[0] + 1):
        i, f = divmod(j, stride)
        w = f / stride
        out[j - 1] = steps[i] if w == 0 else (1 - w) * steps[i] + w * steps[i + 1]
    return out


def at_time_step(forecaster, minutes: float):
    """``forecaster`` adapted to an archive with ``minutes`` between frames (see above)."""
    adapt = getattr(forecaster, "at_time_step", None)
    return forecaster if adapt is None else adapt(minutes)


def _movable(last: np.ndarray):
    """``last`` (H, W) as a field and its validity (1, 1, H, W) tensors to advect: no data
    invalid, dBZ below the dry floor raised to it (as the extrapolation baselines do)."""
    import torch

    known = np.isfinite(last)
    values = np.where(known, np.maximum(last, FLOOR_DBZ), FLOOR_DBZ).astype(np.float32)
    return (torch.from_numpy(values)[None, None],
            torch.from_numpy(known.astype(np.float32))[None, None])  # fmt: skip


def _mark_no_data(forecast: np.ndarray, last: np.ndarray) -> np.ndarray:
    """NaN wherever the last observed frame has no data (outside the radar coverage)."""
    forecast[:, np.isnan(last)] = np.nan
    return forecast


# --------------------------------------------------------------------------------------------
# the registry

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str, factory: Callable[..., Any]) -> None:
    """Register ``factory`` (a class or function taking keyword options) under ``name``."""
    _REGISTRY[name] = factory


for _cls in (MIMNetForecaster, Persistence, Extrapolation, SProg):
    register(_cls.name, _cls)


@functools.cache
def _plugins() -> dict[str, Callable[..., Any]]:
    found = {}
    for ep in entry_points(group="mimcast.forecasters"):
        found[ep.name] = ep.load()
    return found


def list_forecasters() -> list[str]:
    """Return the names of all forecast methods (built-in and from entry points)."""
    return sorted(set(_REGISTRY) | set(_plugins()))


def get_forecaster(name: str, **options: Any):
    """Build the forecaster ``name`` with keyword ``options`` (those its class does not take
    are ignored, so callers can pass one set of options to every method)."""
    factory = _REGISTRY.get(name) or _plugins().get(name)
    if factory is None:
        raise ValueError(
            f"unknown forecast method {name!r}; known: {', '.join(list_forecasters())}"
        )
    import inspect

    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        options = {k: v for k, v in options.items() if k in accepted}
    return factory(**options)
