"""Confidence intervals of skill differences: resampled reference times, paired methods."""

from __future__ import annotations

import numpy as np
import pytest

from mimcast.pipeline.significance import (
    MIN_UNITS,
    Group,
    Resampling,
    _block_counts,
    block_length,
    differences,
    markdown_section,
    resample_weights,
)
from mimcast.pipeline.verify import Scores, VerifyOptions

OPTIONS = VerifyOptions(dbz_thresholds=(20.0, 30.0), rate_thresholds=(), fss_scales=(11,))


def _reference(rng, errors: dict[str, float], leads=(5, 10)) -> Scores:
    """One reference time: each method is the observation plus noise of the given size."""
    scores = Scores(OPTIONS)
    for lead in leads:
        observed = np.where(rng.random((24, 24)) > 0.5, rng.uniform(15, 45, (24, 24)), 0.0)
        for method, sigma in errors.items():
            scores.add(method, lead, observed + rng.normal(0, sigma, observed.shape), observed)
    return scores


def _row(rows, method, baseline, lead, metric, threshold):
    key = (method, baseline, lead, metric, threshold)
    (row,) = [
        r
        for r in rows
        if (r["method"], r["baseline"], r["lead_time"], r["metric"], r["threshold"]) == key
    ]
    return row


def test_block_length_spans_the_forecasts_that_overlap():
    refs = np.arange("2026-01-01T00:00", "2026-01-01T05:00", 30, dtype="datetime64[m]")
    assert block_length(refs, 60) == 2  # 30 minutes apart, 1 h forecasts: pairs overlap
    assert block_length(refs, 30) == 1
    assert block_length(refs[::2], 60) == 1
    assert block_length(refs[:1], 60) == 1
    assert block_length([str(r) for r in refs[:3]], 600) == 3  # never longer than the refs


def test_block_resampling_draws_as_many_reference_times_as_there_are():
    rng = np.random.default_rng(0)
    counts = _block_counts(7, 3, (500,), rng)
    assert counts.shape == (500, 7)
    assert np.all(counts.sum(axis=1) == 7)
    assert counts.min() == 0 and counts.max() > 1  # some drawn twice, some not at all
    # consecutive reference times come together: in blocks of 3, a drawn one's neighbour is
    # drawn far more often than in blocks of 1
    blocks1 = _block_counts(7, 1, (500,), rng)
    together = lambda c: np.mean((c[:, 2] > 0) & (c[:, 3] > 0)) / np.mean(c[:, 2] > 0)  # noqa: E731
    assert together(counts) > together(blocks1) + 0.15
    assert np.all(_block_counts(1, 2, (10,), rng) == 1)
    # several archives: each resample draws as many archives as there are
    groups = [Group((Scores(OPTIONS),) * 2), Group((Scores(OPTIONS),) * 3)]
    weights = resample_weights(groups, 400, rng)
    assert weights.shape == (400, 5)
    drawn = weights[:, :2].sum(1) / 2 + weights[:, 2:].sum(1) / 3
    assert np.allclose(drawn, 2)
    assert np.any(weights[:, :2].sum(1) == 0)  # an archive can be left out of a resample


def test_the_point_estimate_is_the_pooled_tables_difference():
    rng = np.random.default_rng(1)
    parts = [_reference(rng, {"mimnet": 4.0, "persistence": 9.0}) for _ in range(5)]
    rows = differences([Group(tuple(parts))])
    pooled = Scores(OPTIONS)
    for p in parts:
        pooled.merge(p)
    table = {(r["method"], r["lead_time"], r["metric"], r["threshold"]): r["value"]
             for r in pooled.table()}  # fmt: skip
    for metric, threshold in (("CSI", "20 dBZ"), ("CSI", "30 dBZ"), ("MSE", ""),
                              ("FSS", "30 dBZ @ 11 px")):  # fmt: skip
        for lead in (5, 10):
            got = _row(rows, "mimnet", "persistence", lead, metric, threshold)["difference"]
            want = (
                table[("mimnet", lead, metric, threshold)]
                - table[("persistence", lead, metric, threshold)]
            )
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (metric, lead)


def test_a_consistent_win_is_better_a_tie_is_undecided():
    rng = np.random.default_rng(2)
    parts = [_reference(rng, {"mimnet": 3.0, "extrapolation": 8.0, "persistence": 3.0})
             for _ in range(8)]  # fmt: skip
    rows = differences([Group(tuple(parts))])
    for lead in (5, 10):
        mse = _row(rows, "mimnet", "extrapolation", lead, "MSE", "")
        assert mse["difference"] < 0 and mse["ci_high"] < 0 and mse["verdict"] == "better"
        csi = _row(rows, "mimnet", "extrapolation", lead, "CSI", "20 dBZ")
        assert csi["ci_low"] > 0 and csi["verdict"] == "better"
        assert csi["ci_low"] <= csi["difference"] <= csi["ci_high"]
        # the same error size, other noise: no difference to speak of
        tie = _row(rows, "mimnet", "persistence", lead, "MSE", "")
        assert tie["ci_low"] < 0 < tie["ci_high"] and tie["verdict"] == "undecided"
    # seeded: the same scores give the same intervals, another seed slightly different ones
    assert differences([Group(tuple(parts))], resampling=Resampling(seed=0)) == rows
    other = differences([Group(tuple(parts))], resampling=Resampling(seed=1))
    assert [r["ci_low"] for r in other] != [r["ci_low"] for r in rows]


def test_winning_some_reference_times_and_losing_others_is_undecided():
    rng = np.random.default_rng(3)
    parts = [_reference(rng, {"mimnet": 2.0, "extrapolation": 10.0}) for _ in range(4)]
    parts += [_reference(rng, {"mimnet": 10.0, "extrapolation": 2.0}) for _ in range(4)]
    row = _row(differences([Group(tuple(parts))]), "mimnet", "extrapolation", 5, "MSE", "")
    assert row["verdict"] == "undecided" and row["ci_low"] < 0 < row["ci_high"]
    # the same eight reference times read as two overlapping blocks of four: too few
    blocked = differences([Group(tuple(parts), block=4)])
    row = _row(blocked, "mimnet", "extrapolation", 5, "MSE", "")
    assert row["verdict"] == "too few" and np.isnan(row["ci_low"]) and row["units"] == 2


def test_too_few_reference_times_give_no_interval():
    rng = np.random.default_rng(4)
    parts = [_reference(rng, {"mimnet": 1.0, "persistence": 10.0})
             for _ in range(MIN_UNITS - 1)]  # fmt: skip
    rows = differences([Group(tuple(parts))])
    assert rows and all(r["verdict"] == "too few" for r in rows)
    assert all(np.isnan(r["ci_low"]) and np.isfinite(r["difference"]) for r in rows)
    assert "| mimnet | persistence | MSE | 0 | 0 | 0 | 2 |" in "\n".join(markdown_section(rows))


def test_archives_are_resampled_and_a_lead_one_archive_has_is_resampled_within_it():
    rng = np.random.default_rng(5)
    errors = {"mimnet": 3.0, "extrapolation": 8.0}
    short = [Group((_reference(rng, errors),)) for _ in range(MIN_UNITS)]  # one ref each
    long = Group(tuple(_reference(rng, errors, leads=(5, 10, 15)) for _ in range(6)))
    rows = differences([*short, long])
    at5 = _row(rows, "mimnet", "extrapolation", 5, "MSE", "")
    assert at5["units"] == MIN_UNITS + 1 and at5["verdict"] == "better"
    at15 = _row(rows, "mimnet", "extrapolation", 15, "MSE", "")  # the long archive alone
    assert at15["units"] == 6 and at15["verdict"] == "better"
    # archives that disagree leave the pooled difference undecided
    losing = [Group((_reference(rng, {"mimnet": 8.0, "extrapolation": 3.0}),))
              for _ in range(MIN_UNITS)]  # fmt: skip
    mixed = _row(differences([*short, *losing]), "mimnet", "extrapolation", 5, "MSE", "")
    assert mixed["verdict"] == "undecided"


def test_an_event_most_resamples_miss_gets_no_interval():
    rng = np.random.default_rng(6)
    wet = _reference(rng, {"mimnet": 2.0, "extrapolation": 9.0})
    dry = Scores(OPTIONS)
    for lead in (5, 10):
        for method in ("mimnet", "extrapolation"):
            dry.add(method, lead, np.zeros((24, 24)), np.zeros((24, 24)))
    rows = differences([Group((wet, *[dry] * 9))])  # one wet reference time in ten
    csi = _row(rows, "mimnet", "extrapolation", 5, "CSI", "20 dBZ")
    assert np.isfinite(csi["difference"]) and csi["verdict"] == "too few"
    assert _row(rows, "mimnet", "extrapolation", 5, "MSE", "")["verdict"] != "too few"
