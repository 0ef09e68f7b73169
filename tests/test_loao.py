"""Leave-one-archive-out: the pack's split of short archives, and the one documented command."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

TINY = """
[model]
num_layers = 2
num_hidden = 8
patch_size = 4
layer_norm = true
residual = true

[data]
input_length = 4
output_length = 4
frame = "lagrangian"
min_targets = 3
patch = 32
stride = 16
min_coverage = 0.01
val = 0.2

[train]
batch_size = 2
max_steps = 2
warmup_steps = 1
ss_stop_step = 1
val_every = 2
val_batches = 1
checkpoint_every = 1
bf16 = false
"""


def _cube(path: Path, frames: int, seed: int) -> Path:
    cube = synthetic_cube(SyntheticConfig(height=64, width=64, frames=frames, seed=seed,
                                          cell_rate=3.0))  # fmt: skip
    cube.to_zarr(path, consolidated=False)
    return path


def test_an_archive_too_short_to_split_trains_and_the_others_validate(tmp_path):
    from mimcast.pipeline.packs import PackConfig, PackDataset, build_pack

    long = _cube(tmp_path / "long.zarr", 40, 1)
    short = _cube(tmp_path / "short.zarr", 14, 2)  # 10-frame windows: no room for both
    config = PackConfig(n_inputs=4, n_outputs=6, min_targets=6, patch=32, stride=16,
                        min_coverage=0.01)  # fmt: skip
    pack = build_pack([long, short], tmp_path / "pack.npz", config, progress=False)
    train, val = PackDataset(pack, "train"), PackDataset(pack, "val")
    by_cube = {s: {k for k, *_ in d.items} for s, d in (("train", train), ("val", val))}
    assert by_cube == {"train": {0, 1}, "val": {0}}
    assert (train.arrays["split_1"] == 0).all()  # every window of the short one trains


def test_a_fold_takes_its_archives_from_the_pack_and_unknown_names_are_errors(tmp_path):
    from mimcast.pipeline import loao
    from mimcast.pipeline.packs import PackConfig, build_pack

    cubes = [_cube(tmp_path / f"{n}.zarr", 20, s) for n, s in (("a", 1), ("b", 2))]
    out = tmp_path / "loao"
    out.mkdir()
    config = PackConfig(n_inputs=4, n_outputs=6, min_targets=6, patch=32, stride=16,
                        min_coverage=0.01)  # fmt: skip
    pack = build_pack(cubes, out / "pack.npz", config, progress=False)
    assert loao.pack_archives(pack) == ["a", "b"]
    assert loao.check_archives(pack, ["b", "a"], "a", "final") == ["a", "b"]
    # a misspelt fold would train on every archive, the one "left out" included
    with pytest.raises(ValueError, match=r"A: no such archive in .*pack\.npz \(archives: a, b\)"):
        loao.train_one(pack, out, None, "A", "lagrangian", ["a", "b"])
    with pytest.raises(ValueError, match="no such archive"):  # an exclusion too (terms of use)
        loao.train_all([str(c) for c in cubes], out, None, None, exclude=("rmi",))
    # cubes other than the pack's would shift every archive's index
    with pytest.raises(ValueError, match=r"built from a, b, not from the cubes given \(a\)"):
        loao.train_all([str(cubes[0])], out, None, None)
    assert not (out / "folds").exists()  # nothing trained

    # the CLI's default exclusion (rmi) applies only where the pack holds rmi
    done = subprocess.run(
        [sys.executable, "-m", "mimcast.pipeline.cli", "loao", *map(str, cubes), "--out",
         str(out), "--stage", "train", "--only", "c/lagrangian"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and "c: no such archive" in done.stderr, done.stderr[-2000:]
    assert "rmi" not in done.stderr


def test_a_method_missing_from_an_archive_is_left_out_of_the_pool(tmp_path, caplog):
    import numpy as np

    from mimcast.pipeline import loao
    from mimcast.pipeline.verify import Scores, VerifyOptions

    rng = np.random.default_rng(0)
    for name, methods in (("a", ("persistence", "mimnet-lagrangian")), ("b", ("persistence",))):
        scores = Scores(VerifyOptions())
        for method in methods:
            for lead in (5, 10):
                observed = rng.uniform(0, 50, (16, 16))
                scores.add(method, lead, observed + rng.normal(0, 3, observed.shape), observed)
        where = tmp_path / "evaluation" / name
        where.mkdir(parents=True)
        (where / loao.ACCUMULATORS).write_text(json.dumps({
            "archive": name, "step_minutes": 5, "cube": f"{name}.zarr",
            "scored_at": "2026-11-28T00:00:00Z", "inference": "fp32",
            "scores": scores.state()}))  # fmt: skip
    with caplog.at_level("INFO", logger="mimcast"):
        pooled = loao.evaluate_all([], tmp_path, progress=False)
    for where in (pooled, tmp_path / "pooled_minutes"):
        with (where / "scores.csv").open() as fh:
            assert {r["method"] for r in csv.DictReader(fh)} == {"persistence"}
    with (tmp_path / "per_archive.csv").open() as fh:
        kept = {(r["archive"], r["method"]) for r in csv.DictReader(fh)}
    assert ("a", "mimnet-lagrangian") in kept  # its own archive's rows stay
    assert "mimnet-lagrangian: not scored on b; left out of the pooled" in caplog.text
    assert "pooling b as scored on 2026-11-28T00:00:00Z in fp32" in caplog.text


def test_every_post_processing_is_scored_from_one_integration_of_the_trajectories(
    tmp_path, monkeypatch
):
    # pm-advected's reference moves along the trajectories of the forecast it computes; called
    # first, it leaves that forecast cached for the others, which never need the separate path
    from mimcast.pipeline import forecasters, loao
    from mimcast.pipeline.cube import open_cube
    from mimcast.pipeline.defaults import DATA, POSTPROCESS

    cube = open_cube(_cube(tmp_path / "a.zarr", 20, 5))
    models = loao.model_forecasters("lagrangian", DATA / "mimnet_real.safetensors")
    assert len(models) == len(POSTPROCESS)
    models = {label: forecasters.for_cube(fc, cube) for label, fc in models.items()}
    inputs = cube["reflectivity"].values[4:8]

    def again(*args, **kwargs):
        raise AssertionError("the trajectories were integrated a second time")

    monkeypatch.setattr(forecasters, "_RAW", {})
    separate = {label: fc(inputs, 12) for label, fc in models.items()}  # the cache filled
    monkeypatch.setattr(forecasters, "_RAW", {})
    monkeypatch.setattr(forecasters.MIMNetForecaster, "_advected_last", staticmethod(again))
    for label, fc in models.items():  # in loao's order: pm-advected never calls it
        np.testing.assert_array_equal(fc(inputs, 12), separate[label])
    with pytest.raises(AssertionError, match="a second time"):  # the test's premise: the
        models["mimnet-lagrangian-pm-advected"](inputs, 12)  # cached forecast would call it


def test_scoring_another_method_into_dir_adds_it_to_the_archives_stored_scores(tmp_path, caplog):
    # e.g. the Eulerian variant scored a session after the Lagrangian one: both pool
    from mimcast.pipeline import loao

    cube = str(_cube(tmp_path / "a.zarr", 30, 5))
    out = tmp_path / "loao"

    def score(methods, refs):
        loao.evaluate_all([cube], out, variants=(), baselines=methods, max_refs=refs,
                          progress=False)  # fmt: skip
        stored = json.loads((out / "evaluation" / "a" / loao.ACCUMULATORS).read_text())
        with (out / "pooled" / "scores.csv").open() as fh:
            pooled = {r["method"] for r in csv.DictReader(fh)}
        return stored, pooled

    # the same reference times (extrapolation and S-PROG need 3 inputs, persistence 1)
    first, _ = score(("persistence", "extrapolation"), 2)
    with caplog.at_level("INFO", logger="mimcast"):
        both, pooled = score(("extrapolation", "sprog"), 2)
    assert pooled == {"persistence", "extrapolation", "sprog"}
    assert [set(state["data"]) for _, state in both["by_reference"]] == [pooled, pooled]
    assert set(both["scores"]["data"]) == pooled
    assert both["kept"] == {"persistence": first["scored_at"]}
    assert "a: keeping persistence as scored on" in caplog.text
    for (ref, old), (again, state) in zip(first["by_reference"], both["by_reference"],
                                          strict=True):  # fmt: skip
        assert ref == again and state["data"]["persistence"] == old["data"]["persistence"]
    report = (out / "evaluation" / "a" / "report.md").read_text()
    assert "| persistence |" in report and "| sprog |" in report
    # other reference times: the stored scores are of other forecasts, and are replaced
    _, pooled = score(("extrapolation",), 1)
    assert pooled == {"extrapolation"}


def test_pooled_differences_resample_archives_and_their_reference_times(tmp_path):
    import numpy as np

    from mimcast.pipeline import loao
    from mimcast.pipeline.verify import Scores, VerifyOptions

    rng = np.random.default_rng(1)

    def reference(step):
        scores = Scores(VerifyOptions())
        for lead in (step, 2 * step):
            observed = np.where(rng.random((16, 16)) > 0.4, rng.uniform(15, 50, (16, 16)), 0.0)
            for method, sigma in (("mimnet-lagrangian", 2.0), ("extrapolation", 8.0)):
                noise = rng.normal(0, sigma, observed.shape)
                scores.add(method, lead, observed + noise, observed)
        return scores

    # four archives stored with each reference time's scores, one (older) without
    for i, step in enumerate((5, 5, 10, 6, 5)):
        parts = [reference(step) for _ in range(2)]
        pooled = Scores(VerifyOptions())
        for part in parts:
            pooled.merge(part)
        record = {"archive": f"a{i}", "step_minutes": step, "cube": f"a{i}.zarr",
                  "scored_at": "2026-11-29T00:00:00Z", "inference": "fp32",
                  "scores": pooled.state()}  # fmt: skip
        if i < 4:
            record["by_reference"] = [[f"2026-11-29T0{k}:00", p.state()]
                                      for k, p in enumerate(parts)]  # fmt: skip
        where = tmp_path / "evaluation" / f"a{i}"
        where.mkdir(parents=True)
        (where / loao.ACCUMULATORS).write_text(json.dumps(record))
    loao.evaluate_all([], tmp_path, progress=False)
    with (tmp_path / "pooled" / "differences.csv").open() as fh:
        rows = {(int(r["lead_time"]), r["metric"], r["threshold"]): r
                for r in csv.DictReader(fh) if r["baseline"] == "extrapolation"}  # fmt: skip
    for lead in (1, 2):  # lead steps: every archive
        assert rows[(lead, "MSE", "")]["units"] == "5"
        assert rows[(lead, "MSE", "")]["verdict"] == "better"
        assert float(rows[(lead, "MSE", "")]["ci_high"]) < 0
    with (tmp_path / "pooled_minutes" / "differences.csv").open() as fh:
        minutes = {(int(r["lead_time"]), r["metric"]): r for r in csv.DictReader(fh)}
    assert minutes[(5, "MSE")]["units"] == "3"  # three 5-minute archives: too few
    assert minutes[(5, "MSE")]["verdict"] == "too few"
    assert minutes[(12, "MSE")]["units"] == "2"  # one 6-minute archive, its 2 refs
    assert minutes[(12, "MSE")]["archives"] == "1" and minutes[(10, "MSE")]["archives"] == "4"
    report = (tmp_path / "pooled" / "report.md").read_text()
    assert "mimnet-lagrangian minus extrapolation" in report
    assert (tmp_path / "pooled" / "differences.png").stat().st_size > 5000


def test_a_retrained_fold_is_compared_with_the_one_it_replaces_forecast_for_forecast(tmp_path):
    # the same reference times scored twice: the model "now" is closer to the truth than
    # "before"; the baselines are scored now only
    import numpy as np

    from mimcast.pipeline import loao
    from mimcast.pipeline.verify import Scores, VerifyOptions

    rng = np.random.default_rng(2)
    refs = [f"2026-12-06T0{k}:00" for k in range(6)]
    truth = {(ref, lead): np.where(rng.random((16, 16)) > 0.4, rng.uniform(15, 50, (16, 16)), 0.0)
             for ref in refs for lead in (10, 20)}  # fmt: skip

    def store(where, name, sigmas, refs=refs):
        by_reference = []
        for ref in refs:
            part = Scores(VerifyOptions())
            for lead in (10, 20):
                for method, sigma in sigmas.items():
                    observed = truth[(ref, lead)]
                    part.add(method, lead, observed + rng.normal(0, sigma, observed.shape),
                             observed)  # fmt: skip
            by_reference.append([ref, part.state()])
        (where / "evaluation" / name).mkdir(parents=True)
        record = {"archive": name, "step_minutes": 10, "inference": "fp32",
                  "scored_at": "2026-12-06T00:00:00Z", "by_reference": by_reference}  # fmt: skip
        (where / "evaluation" / name / loao.ACCUMULATORS).write_text(json.dumps(record))

    now, before = tmp_path / "now", tmp_path / "before"
    for name in ("a", "b"):
        store(now, name, {"mimnet-lagrangian": 2.0, "extrapolation": 6.0})
        store(before, name, {"mimnet-lagrangian": 9.0, "mimnet-eulerian": 3.0})
    # an earlier loao DIR (a) or a folder of <archive>.json as data/loao (b): both serve
    (before / "evaluation" / "b" / loao.ACCUMULATORS).rename(before / "b.json")
    target = loao.compare(["x/a.zarr", "b.zarr"], now, before)
    for where in ("a", "b", "pooled"):
        with (target / where / "differences.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        # only the model both have, against its own earlier scores
        assert {(r["method"], r["baseline"]) for r in rows} == {
            ("mimnet-lagrangian", "before:mimnet-lagrangian")
        }
        mse = {int(r["lead_time"]): r for r in rows if r["metric"] == "MSE"}
        assert set(mse) == {10, 20}
        # two archives pooled are too few to resample; one archive's 6 hours are enough
        verdict = "too few" if where == "pooled" else "better"
        assert all(float(r["difference"]) < 0 and r["verdict"] == verdict for r in mse.values())
        with (target / where / "scores.csv").open() as fh:
            methods = {r["method"] for r in csv.DictReader(fh)}
        assert methods == {"mimnet-lagrangian", "before:mimnet-lagrangian", "extrapolation"}
        report = (target / where / "report.md").read_text()
        assert "ahead of before:mimnet-lagrangian at CSI ≥ 20 dBZ" in report
        assert "MSE 2 of 2" in report
        (figure,) = (target / where).glob("differences*.png")
        assert figure.stat().st_size > 5000
    assert "6 reference times" in (target / "a" / "report.md").read_text()
    assert str(before / "b.json") in (target / "b" / "report.md").read_text()
    # other reference times cannot be paired: said, naming both files
    store(tmp_path / "other", "a", {"mimnet-lagrangian": 9.0}, refs=refs[:5])
    with pytest.raises(ValueError, match=r"a: .*other.*accumulators.json and .*now.* same ref"):
        loao.compare(["a.zarr"], now, tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no stored scores of c"):
        loao.compare(["c.zarr"], now, before)
    # the command line: --against is required
    done = subprocess.run(
        [sys.executable, "-m", "mimcast.pipeline.cli", "loao", "a.zarr", "--out", str(now),
         "--stage", "compare"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "needs --against" in done.stderr


@pytest.mark.slow
def test_loao_trains_each_fold_in_parallel_and_pools_the_scores(tmp_path):
    cubes = [str(_cube(tmp_path / f"{n}.zarr", 30, s)) for n, s in (("a", 3), ("b", 4))]
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "loao"
    done = subprocess.run(
        [sys.executable, "-m", "mimcast.pipeline.cli", "loao", *cubes, "--out", str(out),
         "--config", str(config), "--jobs", "2", "--max-refs", "1", "--variants", "lagrangian",
         "--exclude", "b", "-v", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("folds/a/lagrangian", "folds/b/lagrangian", "final/lagrangian"):
        assert (out / run / "best.safetensors").exists(), (run, done.stderr[-2000:])
    assert "training final/lagrangian" in done.stderr  # progress names each process
    with (out / "per_archive.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["archive"] for r in rows} == {"a", "b"}
    methods = {r["method"] for r in rows}
    assert {"mimnet-lagrangian", "mimnet-lagrangian-pm", "persistence", "extrapolation",
            "sprog"} <= methods  # fmt: skip
    summary = (out / "summary.md").read_text()
    assert "mimnet-lagrangian" in summary and "sprog" in summary
    from mimcast.models.device import inference_bf16

    stored = json.loads((out / "evaluation" / "a" / "accumulators.json").read_text())
    assert stored["inference"] == ("bf16" if inference_bf16(None, "cpu") else "fp32")
    assert len(stored["by_reference"]) == 1  # --max-refs 1: each reference time's scores
    assert (out / "pooled" / "differences.csv").exists()

    # the folds evaluated one run at a time into another DIR pool as they did together
    again = tmp_path / "one_at_a_time"
    for name, cube in zip(("a", "b"), cubes, strict=True):
        (again / "folds" / name).mkdir(parents=True)
        shutil.copytree(out / "folds" / name / "lagrangian", again / "folds" / name / "lagrangian")
        done = subprocess.run(
            [sys.executable, "-m", "mimcast.pipeline.cli", "loao", cube, "--out", str(again),
             "--stage", "evaluate", "--max-refs", "1", "--variants", "lagrangian", "-v",
             "--device", "cpu"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert "pooling a as scored on" in done.stderr  # the earlier run's archive, named

    def pooled(where, by="pooled"):
        with (where / by / "scores.csv").open() as fh:
            return {(r["method"], int(r["lead_time"]), r["metric"], r["threshold"]):
                    float(r["value"]) for r in csv.DictReader(fh)}  # fmt: skip

    for by in ("pooled", "pooled_minutes"):
        together, apart = pooled(out, by), pooled(again, by)
        assert together.keys() == apart.keys()
        assert apart == pytest.approx(together, nan_ok=True)
    # the same scores, keyed by lead step (5-minute archives) and by lead minutes
    assert {k[1] for k in pooled(out)} == {1, 2, 3, 4}
    assert {k[1] for k in pooled(out, "pooled_minutes")} == {5, 10, 15, 20}
    step, minutes = pooled(out), pooled(out, "pooled_minutes")
    assert {(m, lead * 5, *rest): v for (m, lead, *rest), v in step.items()} == pytest.approx(
        minutes, nan_ok=True
    )
    assert "Pooled at the same lead time" in (again / "summary.md").read_text()
    with (again / "per_archive.csv").open() as fh:
        assert {r["archive"] for r in csv.DictReader(fh)} == {"a", "b"}


def _stored_scores_as_loao_keeps_them(folder: str, out: Path) -> Path:
    """data/<folder>/<archive>.json copied to out/evaluation/<archive>/, as loao stores them."""
    from mimcast.pipeline import loao
    from mimcast.pipeline.defaults import DATA

    for stored in sorted((DATA / folder).glob("*.json")):
        where = out / "evaluation" / stored.stem
        where.mkdir(parents=True)
        shutil.copy(stored, where / loao.ACCUMULATORS)
    return out


@pytest.mark.parametrize(("folder", "method"), [
    ("loao", "mimnet-lagrangian-pm-wet"),  # the seven-archive table
    ("loao_experiments/pm-advected", "mimnet-lagrangian-pm-advected"),  # its default
])  # fmt: skip
def test_the_model_cards_intervals_at_60_minutes_are_what_the_stored_scores_give(
    tmp_path, folder, method
):
    # the card quotes intervals pooled from data/<folder>/*.json; re-pool them and compare
    from mimcast.pipeline import loao
    from mimcast.pipeline.defaults import DATA

    loao.evaluate_all([], _stored_scores_as_loao_keeps_them(folder, tmp_path), progress=False)
    with (tmp_path / "pooled_minutes" / "differences.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["lead_time"] == "60"
                and r["method"] == method]  # fmt: skip
    assert {r["archives"] for r in rows} == {"4"}  # RMI, BoM c10 and cscn, OPERA
    card = (DATA / "MODEL_CARD.md").read_text()
    names = {"extrapolation": "extrapolation", "sprog": "S-PROG", "persistence": "persistence"}
    for baseline, name in names.items():
        cells = []
        for metric, threshold in (("CSI", "20 dBZ"), ("CSI", "30 dBZ"), ("MSE", ""),
                                  ("FSS", "30 dBZ @ 11 px")):  # fmt: skip
            (r,) = [r for r in rows if (r["baseline"], r["metric"], r["threshold"]) ==
                    (baseline, metric, threshold)]  # fmt: skip
            digits = 2 if metric == "MSE" else 3
            values = [float(r[k]) for k in ("difference", "ci_low", "ci_high")]
            text = [f"{v:+.{digits}f}".replace("-", "−") for v in values]
            cells.append(f"{text[0]} [{text[1]}, {text[2]}] {r['verdict']}")
        line = f"| {name} | " + " | ".join(cells) + " |"
        assert line in card, f"the card's 60-minute row of {method} against {name} is not\n{line}"


def test_a_run_that_holds_an_archive_out_cannot_start_from_weights_that_saw_it(tmp_path):
    # [train] init (fine-tuning) in a leave-one-archive-out run: the fold that leaves out an
    # archive the starting model trained on would be scored on data it has seen
    from mimcast.pipeline import loao
    from mimcast.pipeline.config import ConfigError
    from mimcast.pipeline.packs import build_pack
    from mimcast.pipeline.training import load_run_config

    cubes = [_cube(tmp_path / f"{n}.zarr", 20, s) for n, s in (("a", 1), ("b", 2))]
    out = tmp_path / "loao"
    out.mkdir()
    (tmp_path / "tiny.toml").write_text(TINY)
    config = load_run_config(tmp_path / "tiny.toml")
    pack = build_pack(cubes, out / "pack.npz", config.data.pack_config(), progress=False)
    loao.train_one(pack, out, config, "final", "lagrangian", ["a", "b"], exclude=("b",))
    start = out / "final" / "lagrangian" / "best.safetensors"  # trained on a only
    tuned = load_run_config(tmp_path / "tiny.toml", init=str(start))
    with pytest.raises(ConfigError, match=r"init = .*best\.safetensors: it was trained on a, "
                       r"which this run \(a\) holds out"):  # fmt: skip
        loao.train_one(pack, out, tuned, "a", "lagrangian", ["a", "b"])
    with pytest.raises(ConfigError, match=r"trained on a, which this run \(final\) holds out"):
        loao.train_one(pack, tmp_path / "other", tuned, "final", "lagrangian", ["a", "b"],
                       exclude=("a",))  # fmt: skip
    with pytest.raises(ConfigError, match=r"trained on a, which this run \(a\) holds out"):
        loao.train_all([str(c) for c in cubes], out, None, tuned, variants=("lagrangian",))
    assert not (out / "folds").exists()  # checked before any run trained (final and b too)
    loao.train_one(pack, out, tuned, "b", "lagrangian", ["a", "b"])  # it never saw b
    assert (out / "folds" / "b" / "lagrangian" / "best.safetensors").exists()


def test_the_model_cards_pooled_row_of_pm_advected_against_pm_wet_is_what_the_stored_scores_give(
    tmp_path,
):
    # data/MODEL_CARD.md, "Post-processing against the rain still on the grid": leads where
    # pm-advected is better than pm-wet, pooled by lead step over every stored archive
    from mimcast.pipeline import loao
    from mimcast.pipeline.defaults import DATA
    from mimcast.pipeline.verify import Scores, VerifyOptions

    out = _stored_scores_as_loao_keeps_them("loao_experiments/pm-advected", tmp_path)
    stored = loao._stored_archives(out)
    pooled = Scores(VerifyOptions())
    for _, record, minutes in stored:
        pooled.merge(loao._lead_steps(minutes, record["step_minutes"]))
    values = {(r["method"], r["metric"], r["threshold"], r["lead_time"]): r["value"]
              for r in pooled.table()}  # fmt: skip
    a, b = "mimnet-lagrangian-pm-advected", "mimnet-lagrangian-pm-wet"
    cells = []
    for metric, threshold, sign, digits in (("CSI", "20 dBZ", 1, 4), ("CSI", "30 dBZ", 1, 4),
                                            ("CSI", "40 dBZ", 1, 4), ("MSE", "", -1, 2),
                                            ("FSS", "30 dBZ @ 11 px", 1, 4)):  # fmt: skip
        leads = sorted(k[3] for k in values if k[:3] == (a, metric, threshold))
        diff = [
            values[(a, metric, threshold, n)] - values[(b, metric, threshold, n)] for n in leads
        ]
        text = f"{sum(sign * d > 0 for d in diff)}/{len(leads)} ({min(diff):+.{digits}f}.."
        cells.append((text + f"{max(diff):+.{digits}f})").replace("-", "−"))
    assert len(stored) == 7
    line = "| all seven, pooled by lead step | " + " | ".join(cells) + " |"
    card = (DATA / "MODEL_CARD.md").read_text()
    assert line in card, f"the card's pooled row is not\n{line}"
