"""Sequences: normalisation, gap-free windows, coverage-filtered patches, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimcast.pipeline.cube import complete_windows
from mimcast.pipeline.sequences import (
    Normalizer,
    RadarSequenceDataset,
    SequenceConfig,
    patch_origins,
    split_ranges,
    split_starts,
)
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube


def test_normalizer_clips_scales_and_masks_nodata():
    norm = Normalizer(0.0, 70.0)
    x, valid = norm.normalize(np.array([np.nan, -32.0, 0.0, 35.0, 70.0, 90.0]))
    np.testing.assert_allclose(x, [0, 0, 0, 0.5, 1, 1])
    np.testing.assert_array_equal(valid, [0, 1, 1, 1, 1, 1])
    assert norm.denormalize(np.float32(0.5)) == 35.0
    with pytest.raises(ValueError, match="dbz_max"):
        Normalizer(10, 10)


def test_windows_never_cross_gaps():
    observed = np.ones(30, dtype=bool)
    observed[[7, 20]] = False
    starts = complete_windows(observed, 5)
    for s in starts:
        assert observed[s : s + 5].all()
    # every gap-free window is found
    expected = [s for s in range(26) if observed[s : s + 5].all()]
    assert starts.tolist() == expected
    assert complete_windows(observed, 5, stride=2).tolist() == [s for s in expected if s % 2 == 0]
    assert complete_windows(observed[:3], 5).size == 0


def test_splits_are_chronological_disjoint_and_buffered():
    config = SequenceConfig(input_length=4, output_length=6, buffer=5)
    observed = np.ones(400, dtype=bool)
    spans = {}
    for split in ("train", "val", "test"):
        starts = split_starts(observed, config, split)
        assert starts.size
        spans[split] = (starts.min(), starts.max() + config.length - 1)
    assert spans["train"][1] + 5 < spans["val"][0]
    assert spans["val"][1] + 5 < spans["test"][0]
    ranges = split_ranges(400, config)
    assert ranges["train"] == (0, 280) and ranges["val"][0] == 285


@pytest.fixture(scope="module")
def cube():
    ds = synthetic_cube(SyntheticConfig(height=64, width=96, frames=60, seed=8))
    observed = np.ones(60, dtype=bool)
    observed[25] = False  # a gap, as ingest marks it
    ds.reflectivity.values[25] = np.nan
    return ds.assign(observed=("time", observed))


def test_dataset_items_are_gap_free_patches_with_echo(cube):
    config = SequenceConfig(input_length=3, output_length=3, patch=32, stride=16,
                            min_coverage=0.05, train=0.6, val=0.2)  # fmt: skip
    data = RadarSequenceDataset([cube], config, "train")
    assert len(data) > 0
    origins = patch_origins(64, 96, config)
    assert len(origins) == 3 * 5
    refl = cube.reflectivity.values
    for _k, t0, r0, c0 in data.items:
        assert not (t0 <= 25 < t0 + 6)  # never across the gap
        window = refl[t0 : t0 + 6, r0 : r0 + 32, c0 : c0 + 32]
        assert (np.nan_to_num(window, nan=-99) >= 15).mean() >= 0.05  # the coverage filter
    frames, _valid = data[0]
    assert frames.shape == (6, 1, 32, 32) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    # the filter really removes empty-sky patches
    everything = RadarSequenceDataset([cube], SequenceConfig(
        input_length=3, output_length=3, patch=32, stride=16, min_coverage=0.0,
        train=0.6, val=0.2), "train")  # fmt: skip
    assert len(everything) > len(data)
    # splits never share a frame
    val = RadarSequenceDataset([cube], config, "val")
    train_frames = {t for _, t0, _, _ in data.items for t in range(t0, t0 + 6)}
    val_frames = {t for _, t0, _, _ in val.items for t in range(t0, t0 + 6)}
    assert not train_frames & val_frames


def test_dataset_reads_several_cubes_and_whole_grids(cube, tmp_path):
    store = tmp_path / "c.zarr"
    cube.to_zarr(store, consolidated=False)
    config = SequenceConfig(input_length=2, output_length=2, patch=0, min_coverage=0.0)
    data = RadarSequenceDataset([store, cube], config, "train")
    sources = {k for k, *_ in data.items}
    assert sources == {0, 1}
    frames, valid = data[len(data) - 1]
    assert frames.shape == (4, 1, 64, 96)
    assert float(valid.min()) == 0.0  # nodata outside coverage stays masked


def test_patch_larger_than_grid_fails_clearly():
    with pytest.raises(ValueError, match="larger than the grid"):
        patch_origins(16, 16, SequenceConfig(patch=32))
