"""Training packs: windows of real radar with their motion fields, for Eulerian or Lagrangian
training, in one compact file that travels to a GPU machine.

Contract
--------
:func:`build_pack` reads cubes (any provider, step and resolution) and writes one ``.npz``:

- per cube ``k``: ``frames_k`` ``(T, H, W)`` uint8 (dBZ quantised, see :data:`QUANT`; 255 = no
  data), ``starts_k`` (window start indices), ``velocity_k`` ``(S, 2, H/4, W/4)`` float16:
  the Lucas-Kanade motion of each window's last ``motion_frames`` inputs (pixels per step,
  block-averaged by 4; it is smooth), and ``split_k`` (0 train, 1 validation per start);
- ``items`` ``(N, 4)``: ``(cube, start index, row, col)`` of every patch whose last input
  frame holds echo (``min_coverage``), and ``meta`` (JSON: cube names, steps, lengths).

Frames are model steps: every cube keeps its own time step (2-15 min) and resolution, and
the motion field, measured per window, carries the step's meaning. With ``min_step_minutes``
a cube whose step is shorter gives windows of every k-th frame (``meta["strides"]``), as
MIMNet forecasts read such archives (:func:`~mimcast.pipeline.forecasters.frame_stride`);
windows still start at every frame. A window needs all its
inputs observed and at least ``min_targets`` observed targets; later targets that are
missing (past the end of a short archive, or a gap) are no-data in the loss. The last
``val_fraction`` of each cube's starts is validation, with ``n_inputs + n_outputs`` frames
of buffer, so training and validation windows never share a frame.

:class:`PackDataset` serves ``(frames, valid)`` patches as ``models.train`` expects them
(``(frames, valid, step_minutes)`` for a model with ``step_input``),
normalised to [0, 1]: in the Lagrangian frame (inputs and targets moved with the window's
motion to the reference time, with a margin around the patch so that echo moving in is
there) or the Eulerian one, optionally rotated and flipped (augmentation; the Lagrangian
transform is done first, so the motion needs no rotating). This module imports only numpy
and torch at load time, so a GPU machine without the ingest stack can train from a pack.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimcast.pipeline.defaults import FRAMES

#: dBZ <-> uint8: code = round((dBZ - lo) / step), lo = 0 dBZ, step 0.3 dB (0..75 dBZ);
#: weaker echo and "no echo" are 0; 255 is no data.
QUANT = (0.0, 0.3)
NO_DATA = 255
VELOCITY_BLOCK = 4


def quantise(dbz: np.ndarray) -> np.ndarray:
    """dBZ (NaN: no data) -> uint8 codes."""
    lo, step = QUANT
    codes = np.clip(np.rint((np.nan_to_num(dbz, nan=lo) - lo) / step), 0, 250).astype(np.uint8)
    codes[np.isnan(dbz)] = NO_DATA
    return codes


def dequantise(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> dBZ float32 (NaN where no data)."""
    lo, step = QUANT
    dbz = codes.astype(np.float32) * step + lo
    dbz[codes == NO_DATA] = np.nan
    return dbz


@dataclass(frozen=True)
class PackConfig:
    """How windows are cut into a pack."""

    n_inputs: int = 4  # observed frames per window
    n_outputs: int = 12  # target frames per window
    min_targets: int = 6  # a window needs at least this many observed targets
    motion_frames: int = 3  # last inputs for Lucas-Kanade
    patch: int = 64  # patch side (pixels)
    stride: int = 32  # between patch origins
    echo_dbz: float = 15.0  # echo threshold for the coverage filter
    min_coverage: float = 0.03  # echo fraction of the last input frame of a patch
    val_fraction: float = 0.2  # last fraction of each cube's starts for validation
    max_items_per_cube: int = 4000  # cap (random subset, seeded) so no archive dominates
    seed: int = 0
    min_step_minutes: float = 0.0  # windows of every k-th frame where the step is shorter


def block_mean(v: np.ndarray, k: int) -> np.ndarray:
    """Average ``(C, H, W)`` over ``k x k`` blocks (edges padded by repetition)."""
    c, h, w = v.shape
    hh, ww = -(-h // k) * k, -(-w // k) * k
    pad = np.pad(v, ((0, 0), (0, hh - h), (0, ww - w)), mode="edge")
    return pad.reshape(c, hh // k, k, ww // k, k).mean(axis=(2, 4))


def build_pack(
    cubes: Sequence[str | Path],
    out: str | Path,
    config: PackConfig | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Write a training pack of ``cubes`` to ``out`` (see the module docstring)."""
    from mimcast.pipeline.atomic import atomic_path
    from mimcast.pipeline.cube import VARIABLE, axis_breaks, open_cube, pixel_metres, step_minutes
    from mimcast.pipeline.cube import observed as cube_observed
    from mimcast.pipeline.forecasters import MODEL_MOTION_SIDE, frame_stride, motion_field

    config = config or PackConfig()
    length = config.n_inputs + config.n_outputs
    arrays: dict[str, np.ndarray] = {}
    items: list[tuple[int, int, int, int]] = []
    meta = {"config": config.__dict__, "cubes": [], "steps": [], "sizes": [], "strides": [],
            "pixel_m": []}  # fmt: skip
    rng = np.random.default_rng(config.seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cubes), desc="pack", unit="cube")
    for k, path in enumerate(cubes):
        cube = open_cube(path)
        dbz = cube[VARIABLE].values.astype(np.float32)  # (T, H, W)
        obs = cube_observed(cube)
        jumps = axis_breaks(cube)
        n_t, height, width = dbz.shape
        if config.patch > min(height, width):
            raise ValueError(f"{path}: grid {height}x{width} is smaller than patch {config.patch}")
        every = frame_stride(step_minutes(cube), config.min_step_minutes)
        n_in, span = (config.n_inputs - 1) * every + 1, (length - 1) * every + 1  # in frames
        starts = []
        for s in range(0, n_t - n_in + 1):
            if not obs[s : s + n_in : every].all() or jumps[s + 1 : s + span].any():
                continue
            targets = obs[s + n_in - 1 + every : s + span : every]
            if targets.sum() >= config.min_targets:
                starts.append(s)
        velocities, cube_items = [], []
        rows = range(0, height - config.patch + 1, config.stride)
        cols = range(0, width - config.patch + 1, config.stride)
        for i, s in enumerate(starts):
            inputs = dbz[s : s + n_in : every]
            velocity = motion_field(inputs, config.motion_frames, MODEL_MOTION_SIDE)
            velocities.append(block_mean(velocity, VELOCITY_BLOCK).astype(np.float16))
            echo = np.nan_to_num(inputs[-1], nan=-99.0) >= config.echo_dbz
            integral = np.zeros((height + 1, width + 1), dtype=np.int64)
            integral[1:, 1:] = echo.cumsum(0).cumsum(1)
            p = config.patch
            for r in rows:
                for c in cols:
                    hits = integral[r + p, c + p] - integral[r, c + p] - integral[r + p, c]
                    if (hits + integral[r, c]) >= config.min_coverage * p * p:
                        cube_items.append((k, i, r, c))
        if len(cube_items) > config.max_items_per_cube:
            keep = rng.choice(len(cube_items), config.max_items_per_cube, replace=False)
            cube_items = [cube_items[j] for j in sorted(keep)]
        n_val = round(len(starts) * config.val_fraction)
        split = np.zeros(len(starts), dtype=np.uint8)
        if n_val:
            first_val = starts[len(starts) - n_val]
            split[len(starts) - n_val :] = 1
            for j, s in enumerate(starts):  # buffer: no shared frame with validation
                if split[j] == 0 and s + span > first_val:
                    split[j] = 2  # dropped
            if not (split == 0).any():
                # too short to give both (e.g. 24 frames for 16-frame windows): it trains
                # only, and the other archives validate; otherwise it would teach nothing
                split[:] = 0
        arrays[f"frames_{k}"] = quantise(dbz)
        arrays[f"starts_{k}"] = np.asarray(starts, dtype=np.int32)
        arrays[f"velocity_{k}"] = (
            np.stack(velocities) if velocities else np.zeros((0, 2, 1, 1), np.float16)
        )
        arrays[f"split_{k}"] = split
        items.extend(cube_items)
        meta["cubes"].append(str(path))
        meta["steps"].append(step_minutes(cube))
        meta["sizes"].append([height, width])
        meta["pixel_m"].append(pixel_metres(cube))
        meta["strides"].append(every)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(windows=len(starts), patches=len(cube_items))
    if bar is not None:
        bar.close()
    arrays["items"] = np.asarray(items, dtype=np.int32).reshape(-1, 4)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out = Path(out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out


def _decode_meta(array: np.ndarray) -> dict:
    """A pack's ``meta`` entry (JSON bytes, as :func:`build_pack` writes it) as a dict."""
    return json.loads(array.tobytes().decode())


def pack_meta(pack: str | Path) -> dict:
    """A pack's ``meta`` (config, cube paths, steps, sizes, strides), without its arrays."""
    with np.load(pack) as data:
        return _decode_meta(data["meta"])


def _blocks(lo: int, hi: int) -> slice:
    """Motion blocks that bilinear upsampling reads for pixels ``lo:hi`` (one more each side)."""
    b = VELOCITY_BLOCK
    return slice(max(lo // b - 1, 0), -(-hi // b) + 1)  # numpy clips the end to the grid


class PackDataset:
    """``(frames, valid)`` patches from a pack, Eulerian or Lagrangian, optionally augmented.

    Parameters
    ----------
    pack
        Path of a pack from :func:`build_pack`.
    split
        ``"train"`` or ``"val"``.
    frame
        ``"lagrangian"`` or ``"eulerian"``.
    dbz_range
        Normalisation ``(dbz_min, dbz_max)`` to [0, 1].
    augment
        Random 90-degree rotations and flips (training only). The draw is a function of
        ``(seed, epoch, index)`` alone (:meth:`set_epoch`), so a resumed run, each data-loader
        worker and each DDP rank see what one uninterrupted run would have seen.
    cubes
        Only items from these cube indices (None: all), e.g. to leave one archive out.
    device
        With a device (``"cuda"``), every window is moved to its frame once, on the whole grid,
        and kept there in float16: items are crops, and data loading costs nothing next to a
        GPU step. Without one, each item is transformed on its own region (little memory).
    with_step
        Items are ``(frames, valid, step_minutes)``: the minutes between the item's frames
        (its archive's step times the pack's stride), for a model with ``step_input``.
    """

    def __init__(
        self,
        pack: str | Path,
        split: str = "train",
        *,
        frame: str = "lagrangian",
        dbz_range: tuple[float, float] = (0.0, 70.0),
        augment: bool = False,
        cubes: Sequence[int] | None = None,
        seed: int = 0,
        device: str | None = None,
        with_step: bool = False,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split {split!r}: 'train' or 'val'")
        if frame not in FRAMES:
            raise ValueError(f"frame {frame!r}: one of {', '.join(FRAMES)}")
        with np.load(pack) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.meta = _decode_meta(self.arrays["meta"])
        cfg = self.meta["config"]
        self.n_inputs, self.n_outputs = cfg["n_inputs"], cfg["n_outputs"]
        self.patch = cfg["patch"]
        self.frame, self.dbz_range, self.augment = frame, dbz_range, augment
        want = 1 if split == "val" else 0
        keep = []
        for k, i, r, c in self.arrays["items"]:
            if cubes is not None and k not in cubes:
                continue
            if self.arrays[f"split_{k}"][i] == want:
                keep.append((int(k), int(i), int(r), int(c)))
        self.items = keep
        self.seed, self.epoch = seed, 0
        self.device, self.with_step = device, with_step
        self._windows: dict[tuple[int, int], tuple] = {}
        if device is not None:
            for k, i in sorted({(k, i) for k, i, _, _ in keep}):
                self._windows[(k, i)] = self._prepare(k, i, device)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentations (the trainer calls it before each epoch's loader)."""
        self.epoch = int(epoch)

    def cube_names(self) -> list[str]:
        """Paths of the pack's cubes, by index."""
        return list(self.meta["cubes"])

    def stride(self, k: int) -> int:
        """Archive frames between the frames of cube ``k``'s windows (packs before strides: 1)."""
        return self.meta.get("strides", [1] * (k + 1))[k]

    def step_minutes(self, k: int) -> float:
        """Minutes between the frames of cube ``k``'s windows (its step times its stride)."""
        return float(self.meta["steps"][k]) * self.stride(k)

    def _velocity(self, k: int, i: int, rows: slice, cols: slice):
        """Window ``i``'s motion at full resolution on ``rows`` x ``cols`` ``(1, 2, h, w)``.

        Only the blocks around the region are interpolated, with one block of margin, so the
        values equal those of the whole upsampled field (bilinear reads one neighbour per
        side), at a fraction of the cost on a large grid.
        """
        import torch
        import torch.nn.functional as F

        b = VELOCITY_BLOCK
        coarse = self.arrays[f"velocity_{k}"][i]  # (2, ceil(H / b), ceil(W / b))
        height, width = self.arrays[f"frames_{k}"].shape[1:]
        r0, r1, _ = rows.indices(height)
        c0, c1, _ = cols.indices(width)
        brows, bcols = _blocks(r0, r1), _blocks(c0, c1)
        v = torch.from_numpy(coarse[:, brows, bcols].astype(np.float32))[None]
        v = F.interpolate(v, scale_factor=b, mode="bilinear", align_corners=False)
        r, c = brows.start * b, bcols.start * b
        return v[..., r0 - r : r1 - r, c0 - c : c1 - c].contiguous()

    def _margin(self, k: int, i: int, r: int, c: int) -> int:
        """Pixels around patch ``(r, c)`` that every trajectory from it stays within.

        Grown until consistent: no parcel can leave a box whose fastest motion would take
        ``steps`` steps to cross its margin. Local, so one fast corner of a continental grid
        does not make every item transform a huge region.
        """
        v = self.arrays[f"velocity_{k}"][i]  # (2, blocks, blocks)
        if not v.size:
            return 2
        p = self.patch
        steps = max(self.n_inputs - 1, self.n_outputs)
        margin = 2
        while True:
            rows, cols = _blocks(r - margin, r + p + margin), _blocks(c - margin, c + p + margin)
            need = int(np.ceil(float(np.abs(v[:, rows, cols]).max()) * steps)) + 2
            if need <= margin:
                return margin
            margin = need

    def _normalised(self, k: int, i: int, rows: slice, cols: slice):
        import torch

        frames = self.arrays[f"frames_{k}"]
        start = int(self.arrays[f"starts_{k}"][i])
        every = self.stride(k)
        length = self.n_inputs + self.n_outputs
        region = frames[start : start + (length - 1) * every + 1 : every, rows, cols]
        block = np.full((length, *region.shape[1:]), np.nan, dtype=np.float32)
        block[: region.shape[0]] = dequantise(region)
        lo, hi = self.dbz_range
        valid = np.isfinite(block)
        x = (np.clip(np.where(valid, block, lo), lo, hi) - lo) / (hi - lo)
        xt = torch.from_numpy(x.astype(np.float32))[None, :, None]  # (1, T, 1, h, w)
        return xt, torch.from_numpy(valid.astype(np.float32))[None, :, None]

    def _prepare(self, k: int, i: int, device: str):
        """The whole window ``i`` of cube ``k`` in its frame, on ``device`` (float16, bool)."""
        from mimcast.models.advection import to_lagrangian

        xt, vt = self._normalised(k, i, slice(None), slice(None))
        xt, vt = xt.to(device), vt.to(device)
        if self.frame == "lagrangian":
            vel = self._velocity(k, i, slice(None), slice(None)).to(device)
            xt, vt = to_lagrangian(xt, vt, vel, self.n_inputs)
        return xt[0].half(), vt[0] > 0.5  # (T, 1, H, W)

    def __getitem__(self, index: int):
        import torch

        from mimcast.models.advection import to_lagrangian

        k, i, r, c = self.items[index]
        p = self.patch
        if (k, i) in self._windows:
            x_all, v_all = self._windows[(k, i)]
            xt = x_all[:, :, r : r + p, c : c + p].float()  # (T, 1, P, P)
            vt = v_all[:, :, r : r + p, c : c + p].float()
        else:
            height, width = self.arrays[f"frames_{k}"].shape[1:]
            margin = self._margin(k, i, r, c) if self.frame == "lagrangian" else 0
            r0, r1 = max(r - margin, 0), min(r + p + margin, height)
            c0, c1 = max(c - margin, 0), min(c + p + margin, width)
            xt, vt = self._normalised(k, i, slice(r0, r1), slice(c0, c1))
            if self.frame == "lagrangian":
                vel = self._velocity(k, i, slice(r0, r1), slice(c0, c1))
                xt, vt = to_lagrangian(xt, vt, vel, self.n_inputs)
            # the patch itself, out of the region with its margin
            xt = xt[0, :, :, r - r0 : r - r0 + p, c - c0 : c - c0 + p]  # (T, 1, P, P)
            vt = vt[0, :, :, r - r0 : r - r0 + p, c - c0 : c - c0 + p]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            turns = int(rng.integers(4))
            xt, vt = torch.rot90(xt, turns, (2, 3)), torch.rot90(vt, turns, (2, 3))
            if rng.random() < 0.5:
                xt, vt = torch.flip(xt, (3,)), torch.flip(vt, (3,))
        if self.with_step:
            step = torch.tensor(self.step_minutes(k), dtype=torch.float32)
            return xt.contiguous(), vt.contiguous(), step
        return xt.contiguous(), vt.contiguous()
