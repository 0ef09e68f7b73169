"""Sequences: from radar cubes to normalised training windows, patches and splits.

Contract
--------
- **Normalisation** (:class:`Normalizer`): dBZ clipped to ``[dbz_min, dbz_max]`` and scaled to
  [0, 1]; NaN (no data) becomes 0 with a validity mask of 0, so no-data pixels never count
  in a loss. :meth:`Normalizer.denormalize` maps back to dBZ.
- **Windows** of ``input_length + output_length`` consecutive frames never span a gap: every
  frame of a window has ``observed = True`` (ingest marks gaps) and finite data somewhere.
- **Patches** of ``patch`` x ``patch`` pixels at ``stride`` (``patch = 0``: the whole grid),
  kept only where the window's mean echo coverage (fraction of pixels >= ``echo_dbz``)
  reaches ``min_coverage``, so training is not dominated by empty sky.
- **Splits** are chronological per cube: the first ``train`` fraction of the time axis, then
  ``val``, then the rest for ``test``, with ``buffer`` frames left out between them, so
  windows of different splits never overlap in time.
- :class:`RadarSequenceDataset` reads lazily from one or more Zarr cubes (one patch of one
  window per item); the coverage index is computed streaming, one time chunk at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from mimcast.pipeline.cube import (
    VARIABLE,
    axis_breaks,
    complete_windows,
    open_cube,
    validate_cube,
)
from mimcast.pipeline.cube import observed as cube_observed
from mimcast.pipeline.defaults import FRAMES, POSTPROCESS

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Normalizer:
    """dBZ <-> [0, 1]."""

    dbz_min: float = 0.0  # dBZ mapped to 0 (weaker echoes and "no echo" clip to it)
    dbz_max: float = 70.0  # dBZ mapped to 1 (stronger echoes clip to it)

    def __post_init__(self) -> None:
        if not self.dbz_max > self.dbz_min:
            raise ValueError(f"Normalizer: dbz_max {self.dbz_max} must exceed {self.dbz_min}")

    def normalize(self, dbz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values in [0, 1], validity mask)`` as float32; NaN becomes 0 / invalid."""
        valid = np.isfinite(dbz)
        clipped = np.clip(np.where(valid, dbz, self.dbz_min), self.dbz_min, self.dbz_max)
        x = (clipped - self.dbz_min) / (self.dbz_max - self.dbz_min)
        return x.astype(np.float32), valid.astype(np.float32)

    def denormalize(self, x):
        """Return dBZ for normalised values (numpy array or torch tensor)."""
        return x * (self.dbz_max - self.dbz_min) + self.dbz_min

    def threshold(self, dbz: float) -> float:
        """Return the normalised value of ``dbz``."""
        return float((np.clip(dbz, self.dbz_min, self.dbz_max) - self.dbz_min)
                     / (self.dbz_max - self.dbz_min))  # fmt: skip


@dataclass(frozen=True)
class SequenceConfig:
    """How windows, patches and splits are cut from cubes."""

    input_length: int = 6  # observed frames per window
    output_length: int = 12  # target frames per window
    patch: int = 64  # patch side in pixels; 0 takes the whole grid
    stride: int = 32  # step between patch origins in pixels
    echo_dbz: float = 15.0  # a pixel counts as echo from this reflectivity
    min_coverage: float = 0.02  # minimum mean echo fraction of a (window, patch)
    window_stride: int = 1  # step between window starts in frames
    train: float = 0.7  # fraction of each cube's time axis for training
    val: float = 0.15  # fraction for validation (the rest is test)
    buffer: int | None = None  # frames left out between splits; None: input_length
    dbz_min: float = 0.0  # normalisation: dBZ mapped to 0
    dbz_max: float = 70.0  # normalisation: dBZ mapped to 1
    frame: str = "eulerian"  # "lagrangian": windows moved with their motion (pipeline.packs)
    motion_frames: int = 3  # last inputs for the Lucas-Kanade motion (lagrangian)
    min_targets: int | None = None  # packs: observed targets a window needs (None: all)
    augment: bool = False  # packs: random 90-degree rotations and flips in training
    max_items_per_cube: int = 4000  # packs: patch cap per cube, so no archive dominates
    postprocess: str = "none"  # written into checkpoints: one of POSTPROCESS (defaults)
    min_step_minutes: float = 0.0  # packs: windows of every k-th frame where the step is shorter

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"SequenceConfig: frame={self.frame!r}: one of {', '.join(FRAMES)}")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"SequenceConfig: postprocess={self.postprocess!r}: one of "
                             f"{', '.join(POSTPROCESS)}")  # fmt: skip
        if self.input_length < 1 or self.output_length < 1:
            raise ValueError("SequenceConfig: input_length and output_length must be >= 1")
        if self.patch < 0 or (self.patch and self.stride < 1):
            raise ValueError(f"SequenceConfig: patch={self.patch}, stride={self.stride} invalid")
        if not 0 <= self.min_step_minutes < float("inf"):
            raise ValueError(f"SequenceConfig: min_step_minutes={self.min_step_minutes} invalid")
        if not (0 < self.train < 1 and 0 <= self.val < 1 and self.train + self.val <= 1):
            raise ValueError(f"SequenceConfig: train={self.train}, val={self.val} invalid")

    @property
    def length(self) -> int:
        """Frames per window."""
        return self.input_length + self.output_length

    @property
    def uses_pack(self) -> bool:
        """Whether training goes through a pack (Lagrangian frame, augmentation, short cubes)."""
        return (self.frame == "lagrangian" or self.augment or self.min_targets is not None
                or self.min_step_minutes > 0)  # fmt: skip

    def pack_config(self):
        """The :class:`~mimcast.pipeline.packs.PackConfig` these settings cut packs with."""
        from mimcast.pipeline.packs import PackConfig

        return PackConfig(
            n_inputs=self.input_length, n_outputs=self.output_length,
            min_targets=self.min_targets or self.output_length, motion_frames=self.motion_frames,
            patch=self.patch or 64, stride=self.stride, echo_dbz=self.echo_dbz,
            min_coverage=self.min_coverage, val_fraction=self.val,
            max_items_per_cube=self.max_items_per_cube, min_step_minutes=self.min_step_minutes,
        )  # fmt: skip

    @property
    def normalizer(self) -> Normalizer:
        """The normaliser these windows use."""
        return Normalizer(self.dbz_min, self.dbz_max)


def split_ranges(n_times: int, config: SequenceConfig) -> dict[str, tuple[int, int]]:
    """Return ``{split: (first, stop)}`` frame ranges, chronological, with buffers between."""
    buffer = config.input_length if config.buffer is None else config.buffer
    a = round(n_times * config.train)
    b = round(n_times * (config.train + config.val))
    return {
        "train": (0, a),
        "val": (min(a + buffer, n_times), b),
        "test": (min(b + buffer, n_times), n_times),
    }


def split_starts(
    observed: np.ndarray, config: SequenceConfig, split: str, breaks: np.ndarray | None = None
) -> np.ndarray:
    """Return the window starts that lie entirely inside ``split``'s frame range.

    ``breaks``: frames where the cube's time axis jumps (:func:`pipeline.cube.axis_breaks`).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    first, stop = split_ranges(len(observed), config)[split]
    starts = complete_windows(observed, config.length, config.window_stride, breaks)
    return starts[(starts >= first) & (starts + config.length <= stop)]


def patch_origins(height: int, width: int, config: SequenceConfig) -> list[tuple[int, int]]:
    """Return patch origins ``(row, col)``; one origin (0, 0) when ``patch`` is 0."""
    if config.patch == 0:
        return [(0, 0)]
    if config.patch > min(height, width):
        raise ValueError(f"patch {config.patch} is larger than the grid {height}x{width}")
    rows = list(range(0, height - config.patch + 1, config.stride))
    cols = list(range(0, width - config.patch + 1, config.stride))
    return [(r, c) for r in rows for c in cols]


def coverage_index(
    refl: xr.DataArray, origins: Sequence[tuple[int, int]], config: SequenceConfig
) -> np.ndarray:
    """Return echo coverage ``(time, n_origins)`` per frame and patch, streaming over time."""
    n_t = refl.sizes["time"]
    height, width = refl.sizes["y"], refl.sizes["x"]
    size = config.patch or None
    out = np.zeros((n_t, len(origins)), dtype=np.float32)
    chunk = 16
    rows = np.array([o[0] for o in origins])
    cols = np.array([o[1] for o in origins])
    for t0 in range(0, n_t, chunk):
        block = np.asarray(refl.isel(time=slice(t0, t0 + chunk)).values)
        echo = np.nan_to_num(block, nan=-np.inf) >= config.echo_dbz  # (t, y, x)
        if size is None:
            out[t0 : t0 + len(block), 0] = echo.mean(axis=(1, 2))
            continue
        integral = np.zeros((len(block), height + 1, width + 1), dtype=np.int64)
        integral[:, 1:, 1:] = echo.cumsum(axis=1).cumsum(axis=2)
        total = (
            integral[:, rows + size, cols + size]
            - integral[:, rows, cols + size]
            - integral[:, rows + size, cols]
            + integral[:, rows, cols]
        )  # (t, n_origins): echo pixels per patch
        out[t0 : t0 + len(block)] = total / (size * size)
    return out


class RadarSequenceDataset:
    """Normalised (window, patch) samples read lazily from Zarr cubes.

    Each item is ``(frames, valid)``: float32 arrays ``(input_length + output_length, 1, P, P)``
    (torch tensors when torch is importable, for DataLoader collation).

    Parameters
    ----------
    cubes
        Paths of Zarr cubes (written by ingest), or in-memory cubes.
    config
        Windows, patches, coverage filter and splits.
    split
        ``train``, ``val`` or ``test``.
    """

    def __init__(
        self,
        cubes: Sequence[str | Path | xr.Dataset],
        config: SequenceConfig,
        split: str = "train",
    ) -> None:
        self.config = config
        self.split = split
        self.sources = list(cubes)
        self._open: dict[int, xr.Dataset] = {}
        self._pid = os.getpid()
        items = []
        for k, _ in enumerate(self.sources):
            ds = self._cube(k)
            starts = split_starts(cube_observed(ds), config, split, axis_breaks(ds))
            if not len(starts):
                continue
            origins = patch_origins(ds.sizes["y"], ds.sizes["x"], config)
            cov = coverage_index(ds[VARIABLE], origins, config)
            csum = np.concatenate([np.zeros((1, len(origins))), np.cumsum(cov, axis=0)])
            window_cov = (csum[starts + config.length] - csum[starts]) / config.length
            for i, t0 in enumerate(starts):
                for j in np.flatnonzero(window_cov[i] >= config.min_coverage):
                    items.append((k, int(t0), *origins[j]))
        self.items = items

    def _cube(self, k: int) -> xr.Dataset:
        if os.getpid() != self._pid:  # a DataLoader worker: reopen, never share handles
            self._open, self._pid = {}, os.getpid()
        if k not in self._open:
            src = self.sources[k]
            ds = src if isinstance(src, xr.Dataset) else open_cube(src)
            self._open[k] = validate_cube(ds)
        return self._open[k]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        k, t0, r0, c0 = self.items[index]
        ds = self._cube(k)
        size = self.config.patch
        sel = {"time": slice(t0, t0 + self.config.length)}
        if size:
            sel |= {"y": slice(r0, r0 + size), "x": slice(c0, c0 + size)}
        dbz = np.asarray(ds[VARIABLE].isel(sel).values)  # (T, P, P)
        x, valid = self.config.normalizer.normalize(dbz)
        x, valid = x[:, None], valid[:, None]  # (T, 1, P, P)
        try:
            import torch

            return torch.from_numpy(x), torch.from_numpy(valid)
        except ImportError:  # pragma: no cover - torch is a dependency
            return x, valid

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        return state
