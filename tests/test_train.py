"""Training: masked loss, learning, exact resume after kill -9, DDP with torchrun, config."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mimcast.models.checkpoint import load_checkpoint
from mimcast.models.mimnet import MIMNet
from mimcast.models.train import EpochSampler, masked_loss, read_metrics, validate
from mimcast.pipeline import loao
from mimcast.pipeline.config import ConfigError
from mimcast.pipeline.forecasters import MIMNetForecaster
from mimcast.pipeline.ingest import ingest
from mimcast.pipeline.sequences import RadarSequenceDataset
from mimcast.pipeline.synthetic import SyntheticConfig, write_archive
from mimcast.pipeline.training import load_run_config, run_training

REPO = Path(__file__).resolve().parents[1]

TINY_TOML = """
[model]
num_layers = 2
num_hidden = 16
filter_size = 3
patch_size = 4

[data]
input_length = 4
output_length = 4
patch = 32
stride = 16
min_coverage = 0.03
train = 0.7
val = 0.15

[train]
batch_size = 4
max_steps = 50
lr = 0.003
warmup_steps = 5
ss_stop_step = 30
val_every = 50
val_batches = 0
checkpoint_every = 5
log_every = 1
bf16 = false
"""


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    archive = write_archive(SyntheticConfig(height=64, width=64, frames=96, seed=21),
                            root / "archive")  # fmt: skip
    ingest([archive[0].parent], root / "cube.zarr")
    return root / "cube.zarr"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def test_masked_loss_ignores_nodata_pixels():
    pred = torch.rand(2, 3, 1, 8, 8)
    target = torch.rand(2, 3, 1, 8, 8)
    valid = torch.ones_like(target)
    valid[:, :, :, :4] = 0
    garbage = target.clone()
    garbage[:, :, :, :4] = 1e6  # whatever sits in no-data pixels
    assert masked_loss(pred, target, valid, None) == masked_loss(pred, garbage, valid, None)
    assert masked_loss(pred, garbage, torch.ones_like(valid), None) > 1e3


def test_sampler_is_reproducible_sharded_and_resumable():
    a = list(EpochSampler(10, seed=3))
    assert a == list(EpochSampler(10, seed=3)) and sorted(a) == list(range(10))
    s = EpochSampler(10, seed=3)
    s.set_position(0, 4)
    assert list(s) == a[4:]
    s.set_position(1, 0)
    assert list(s) != a
    r0, r1 = EpochSampler(10, 3, 0, 2), EpochSampler(10, 3, 1, 2)
    assert sorted(list(r0) + list(r1)) == list(range(10)) and len(r0) == 5


def test_balanced_sampling_draws_each_archive_equally_and_still_resumes():
    groups = np.array([0] * 90 + [1] * 10)  # one archive with 9x the windows of the other
    s = EpochSampler(100, seed=3, groups=groups)
    epochs = []
    for e in range(2):
        s.set_position(e, 0)
        epochs.append(list(s))
    for order in epochs:
        assert len(order) == 100
        assert (groups[order] == 1).sum() == 50  # not 10: the small archive repeats 5 times
        assert len(set(order) & set(range(90, 100))) == 10
    assert set(epochs[0]) & set(range(90)) != set(epochs[1]) & set(range(90))  # new subsets
    s.set_position(1, 37)
    assert list(s) == epochs[1][37:]
    r0, r1 = EpochSampler(100, 3, 0, 2, groups), EpochSampler(100, 3, 1, 2, groups)
    assert sorted(list(r0) + list(r1)) == sorted(epochs[0])


def test_config_rejects_unknown_keys_and_inconsistent_lengths(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.toml \[train\]: unknown key\(s\) 'learning_rate'"):
        load_run_config(bad)
    bad.write_text("[model]\ninput_length = 5\n[data]\ninput_length = 4\n")
    with pytest.raises(ConfigError, match="disagrees"):
        load_run_config(bad)
    bad.write_text("[optimizer]\n")
    with pytest.raises(ConfigError, match="unknown table"):
        load_run_config(bad)
    default = load_run_config()
    assert default.model.output_length == default.data.output_length == 12


def test_a_run_configuration_takes_the_keys_it_does_not_set_from_its_base(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    stage = tmp_path / "stage2" / "tune.toml"
    stage.parent.mkdir()
    stage.write_text('base = "../tiny.toml"\n[model]\nnum_hidden = 8\n[train]\nlr = 0.0001\n')
    tiny, tuned = load_run_config(tmp_path / "tiny.toml"), load_run_config(stage)
    assert (tuned.model.num_hidden, tuned.train.lr) == (8, 0.0001)
    assert dataclasses.replace(tuned.model, num_hidden=16) == tiny.model  # the rest: the base's
    assert dataclasses.replace(tuned.train, lr=0.003) == tiny.train and tuned.data == tiny.data
    stage.write_text('base = "tune.toml"\n')
    with pytest.raises(ConfigError, match=r"tune.toml: base = 'tune.toml' leads back to"):
        load_run_config(stage)
    stage.write_text('base = "gone.toml"\n')
    with pytest.raises(ConfigError, match=r"gone.toml: configuration file not found \(the base of"):
        load_run_config(stage)
    shipped = load_run_config(Path(__file__).parents[1] / "data" / "real_swa.toml")
    recipe = load_run_config(Path(__file__).parents[1] / "data" / "real_cpu.toml")
    assert shipped.model == recipe.model and shipped.data == recipe.data
    assert shipped.train.min_lr_ratio == 1.0 and shipped.train.keep_validated


def test_a_frame_table_changes_only_that_frames_models(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nresidual = true\nnum_hidden = 8\n[data]\nframe = "lagrangian"\n'
                    "[eulerian.model]\nresidual = false\n")  # fmt: skip
    config = load_run_config(path)
    assert config.model.residual and config.data.frame == "lagrangian"
    eulerian = config.in_frame("eulerian")
    assert not eulerian.model.residual and eulerian.model.num_hidden == 8
    assert eulerian.data.frame == "eulerian"
    assert eulerian.in_frame("lagrangian").model == config.model  # back to the shared [model]
    path.write_text(path.read_text().replace('"lagrangian"', '"eulerian"'))
    assert not load_run_config(path).model.residual  # the file's own frame takes its table
    for bad, match in (
        ("[eulerian.model]\nresidul = false\n", r"run.toml \[eulerian.model\]: unknown.*'residul'"),
        ("[eulerian.train]\nlr = 0.1\n", r"\[eulerian\] may only hold a \[eulerian.model\]"),
        ("[lagrangian.model]\ninput_length = 3\n", r"input_length: set in \[data\]"),
    ):  # fmt: skip
        path.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_run_config(path)
    # the real-radar recipes train their Eulerian variant without the residual head
    for recipe in ("real.toml", "real_cpu.toml"):
        shipped = load_run_config(Path(__file__).parents[1] / "data" / recipe)
        eulerian = loao._variant_config(shipped, "eulerian")
        assert shipped.model.residual and not eulerian.model.residual


def test_fifty_steps_lower_the_validation_mse(cube, config_file, tmp_path):
    config = load_run_config(config_file)
    val_set = RadarSequenceDataset([cube], config.data, "val")
    assert len(val_set) > 0
    torch.manual_seed(config.train.seed)
    untrained = MIMNet(config.model)  # the same initial weights train() starts from
    loader = torch.utils.data.DataLoader(val_set, batch_size=4)
    before = validate(
        untrained, loader, config.model, config.train, (0.0, 70.0), torch.device("cpu")
    )
    result = run_training([cube], tmp_path / "run", config, progress=False)
    assert result.step == 50
    after = [r for r in read_metrics(result.metrics) if r.get("event") == "validation"][-1]
    assert after["val_mse"] < 0.9 * before["val_mse"], (before, after)
    model, extra = load_checkpoint(result.best)
    assert extra["step"] == 50 and model.config == config.model
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 10_000
    assert not list((tmp_path / "run").glob("step_*"))  # keep_validated is off by default


def test_keep_validated_leaves_each_validated_steps_weights_to_choose_among(
    cube, config_file, tmp_path
):
    # best.safetensors is chosen on validation MSE; keep_validated keeps every validated step
    # so that a checkpoint can be chosen afterwards on another score, without retraining
    config = load_run_config(config_file)
    train = dataclasses.replace(config.train, max_steps=20, val_every=10, keep_validated=True)
    result = run_training([cube], tmp_path / "run", dataclasses.replace(config, train=train),
                          progress=False)  # fmt: skip
    kept = sorted(p.name for p in (tmp_path / "run").glob("step_*.safetensors"))
    assert kept == ["step_000010.safetensors", "step_000020.safetensors"]
    scores = {r["step"]: r["val_mse"] for r in read_metrics(result.metrics)
              if r.get("event") == "validation"}  # fmt: skip
    weights = {}
    for name in kept:
        model, extra = load_checkpoint(tmp_path / "run" / name)
        assert extra["val_mse"] == pytest.approx(scores[extra["step"]])
        weights[extra["step"]] = model.state_dict()
    last, _ = load_checkpoint(result.last)
    assert all(torch.equal(v, weights[20][k]) for k, v in last.state_dict().items())
    assert not all(torch.equal(v, weights[20][k]) for k, v in weights[10].items())


def _train_cmd(cube, config_file, out, steps):
    return [sys.executable, "-m",
            "mimcast.pipeline.cli", "train", str(cube), "--config", str(config_file),
            "--out", str(out), "--max-steps", str(steps), "--quiet"]  # fmt: skip


@pytest.mark.parametrize("frame", ["eulerian", "lagrangian_augmented"])
def test_killed_run_resumes_to_the_same_weights(cube, config_file, tmp_path, frame):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if frame != "eulerian":  # through a pack, with random rotations and flips
        config_file = tmp_path / "lagrangian.toml"
        config_file.write_text(  # and drawing each archive equally often
            TINY_TOML.replace("[data]\n", '[data]\nframe = "lagrangian"\naugment = true\n').replace(
                "[train]\n", "[train]\nbalance_archives = true\n"
            )
        )
    # the straight run and the one to kill run side by side (one thread each)
    straight = subprocess.Popen(_train_cmd(cube, config_file, tmp_path / "straight", 20),
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cube, config_file, out, 20), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        steps = (
            [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
            if metrics.exists()
            else []
        )
        if steps and max(steps) >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state_step = max(
        json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
    )
    assert 12 <= state_step < 20, "the run must be killed mid-way"
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-2000:]

    resumed = subprocess.run(_train_cmd(cube, config_file, out, 20), env=env,
                             capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, _ = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    b, extra = load_checkpoint(out / "last.safetensors")
    assert extra["step"] == 20
    for (name, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 20  # the log continues, no repeats


def test_a_deadline_stops_the_run_checkpointed_and_the_same_command_goes_on(
    cube, config_file, tmp_path
):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _train_cmd(cube, config_file, out, 8)
    first = subprocess.run([*cmd, "--deadline-s", "0.001"], env=env, capture_output=True,
                           text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "trained to step 1;" in first.stdout and "stopped at the deadline" in first.stdout
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1] == {"step": 1, "event": "deadline", "deadline_s": 0.001}
    # the step it stopped at is validated and checkpointed, though 1 is no multiple of 5 or 50
    assert [r["step"] for r in records if r.get("event") == "validation"] == [1]
    assert load_checkpoint(out / "last.safetensors")[1]["step"] == 1
    assert (out / "state.safetensors").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "trained to step 8;" in second.stdout and "stopped at" not in second.stdout
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps[0] == 1 and steps[-1] == 8 and steps == sorted(set(steps))


def test_torchrun_two_processes_on_cpu(cube, config_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m",
            "mimcast.pipeline.cli", "train", str(cube), "--config",
           str(config_file), "--out", str(out), "--max-steps", "6", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "best.safetensors",
        "last.safetensors",
        "state.safetensors",
    ]
    _model, extra = load_checkpoint(out / "last.safetensors")
    assert extra["step"] == 6
    losses = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert losses == sorted(set(losses))  # rank 0 alone writes the log
    assert result.stdout.count("trained to step 6") == 1


def test_training_refuses_a_cube_without_validation_windows(cube, config_file, tmp_path):
    config = load_run_config(config_file)
    short = dataclasses.replace(config, data=dataclasses.replace(config.data, val=0.01))
    with pytest.raises(ValueError, match="no validation windows"):
        run_training([cube], tmp_path / "run", short, progress=False)


def test_balanced_weights_grow_with_rain_rate():
    from mimcast.models.train import balanced_weights
    from mimcast.pipeline.zr import MARSHALL_PALMER, rate_to_dbz

    rates = torch.tensor([0.1, 1.0, 3.0, 7.0, 20.0, 50.0])
    dbz = torch.from_numpy(rate_to_dbz(rates.numpy(), MARSHALL_PALMER))
    assert balanced_weights(dbz).tolist() == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0]


def test_balanced_loss_weights_heavy_rain_errors_more():
    from mimcast.models.train import balanced_weights

    target = torch.tensor([[0.1, 0.8]])  # normalised: 7 dBZ and 56 dBZ
    valid = torch.ones_like(target)
    weights = balanced_weights(target * 70)
    light = masked_loss(torch.tensor([[0.2, 0.8]]), target, valid, weights)
    heavy = masked_loss(torch.tensor([[0.1, 0.7]]), target, valid, weights)
    assert heavy > 10 * light  # the same error costs more where it rains hard


def test_learning_rate_warms_up_then_decays_to_the_floor():
    from mimcast.models.train import TrainConfig, lr_factor

    config = TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_factor(100, config) == pytest.approx(0.1)
    factors = [lr_factor(s, config) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


def test_sampling_masks_follow_their_schedules():
    from mimcast.models.mimnet import MIMNetConfig
    from mimcast.models.train import TrainConfig, sampling_mask

    model = MIMNetConfig(input_length=4, output_length=6)
    gen = torch.Generator().manual_seed(0)
    plain = TrainConfig(ss_stop_step=100)
    start = sampling_mask(0, 256, model, plain, gen)
    assert start.shape == (256, 8) and start[:, :3].eq(1).all() and start[:, 3:].eq(1).all()
    assert sampling_mask(50, 4096, model, plain, gen)[:, 3:].mean().item() == pytest.approx(
        0.5, abs=0.03
    )
    assert sampling_mask(100, 256, model, plain, gen)[:, 3:].eq(0).all()  # own predictions
    reverse = TrainConfig(reverse_ss=True, reverse_ss_steps=100, ss_stop_step=100)
    early = sampling_mask(0, 4096, model, reverse, gen)[:, :3].mean().item()
    assert early == pytest.approx(0.5, abs=0.03)  # half the observed frames replaced
    assert sampling_mask(100, 256, model, reverse, gen)[:, :3].eq(1).all()


def test_a_run_killed_before_its_first_checkpoint_does_not_repeat_its_log(cube, tmp_path):
    config = tmp_path / "late_checkpoint.toml"
    config.write_text(TINY_TOML.replace("checkpoint_every = 5", "checkpoint_every = 100"))
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed at step 3, before its first checkpoint, leaves: log lines (the last
    # one cut short) and no state to resume from
    stale = [json.dumps({"step": s, "event": "train", "loss": 9.0}) for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(stale) + '\n{"step": 4, "ev')
    cmd = _train_cmd(cube, config, run, 4)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # each step once, from the new run
    assert all(r["loss"] != 9.0 for r in records)


def test_ddp_backend_is_nccl_only_with_one_gpu_per_process():
    from mimcast.models.device import ddp_backend

    assert ddp_backend("cuda", local_world=2, gpus=2) == "nccl"
    assert ddp_backend("cuda", local_world=1, gpus=8) == "nccl"
    # NCCL refuses two ranks on one GPU: torchrun --nproc_per_node 2 on a 1-GPU machine
    assert ddp_backend("cuda", local_world=2, gpus=1) == "gloo"
    assert ddp_backend("cpu", local_world=2, gpus=0) == "gloo"


def test_select_picks_best_on_the_named_validation_score(cube, config_file, tmp_path):
    from mimcast.models.train import TrainConfig, selection_score

    # lower MSE and lower CSI: the MSE rule prefers the first, the CSI rule the second
    a, b = {"val_mse": 5.0, "csi_30": 0.40}, {"val_mse": 9.0, "csi_30": 0.55}
    assert selection_score(a, "val_mse") < selection_score(b, "val_mse")
    assert selection_score(b, "csi_30") < selection_score(a, "csi_30")
    assert selection_score({"csi_30": float("nan")}, "csi_30") is None
    with pytest.raises(ValueError, match="csi_25"):
        TrainConfig(select="csi_25")  # not one of thresholds_dbz
    # in a run: best.safetensors is the validated step with the highest CSI at 40 dBZ (the
    # first of equals), here not the step the MSE rule would take
    config = load_run_config(config_file)
    train = dataclasses.replace(config.train, max_steps=30, val_every=10, select="csi_40")
    result = run_training([cube], tmp_path / "run", dataclasses.replace(config, train=train),
                          progress=False)  # fmt: skip
    vals = [r for r in read_metrics(result.metrics) if r.get("event") == "validation"]
    assert [r["step"] for r in vals] == [10, 20, 30]
    chosen = max(vals, key=lambda r: r["csi_40"])  # max() keeps the first of equals, as training
    assert chosen["step"] != min(vals, key=lambda r: r["val_mse"])["step"]
    _, extra = load_checkpoint(result.best)
    assert extra["step"] == chosen["step"] and extra["csi_40"] == pytest.approx(chosen["csi_40"])
    assert result.best_val_mse == pytest.approx(chosen["val_mse"])  # still reports MSE


def test_a_finished_run_is_chosen_afresh_among_its_kept_steps_by_select(cube, tmp_path, capsys):
    # trained on validation MSE with keep_validated; `mimcast train --select csi_40` run again
    # on the finished run re-chooses best.safetensors among the kept steps without training,
    # and --select val_mse puts the MSE choice back (the state recorded the switch)
    from mimcast.pipeline.cli import main

    config_file = tmp_path / "kept.toml"
    config_file.write_text(
        TINY_TOML.replace("val_every = 50", "val_every = 10\nkeep_validated = true")
    )
    run = tmp_path / "run"
    result = run_training([cube], run, load_run_config(config_file, max_steps=30), progress=False)
    vals = {r["step"]: r for r in read_metrics(result.metrics) if r.get("event") == "validation"}
    by_mse = min(vals.values(), key=lambda r: r["val_mse"])["step"]
    by_csi = max(vals.values(), key=lambda r: r["csi_40"])["step"]  # first of equals
    assert by_mse != by_csi
    assert load_checkpoint(result.best)[1]["step"] == by_mse
    lines = result.metrics.read_text().count("\n")

    def train_selecting(select):
        args = ["train", str(cube), "--config", str(config_file), "--out", str(run),
                "--max-steps", "30", "--select", select, "-q"]  # fmt: skip
        assert main(args) == 0
        return load_checkpoint(run / "best.safetensors")

    model, extra = train_selecting("csi_40")
    assert extra["step"] == by_csi
    kept, _ = load_checkpoint(run / f"step_{by_csi:06d}.safetensors")
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in model.state_dict().items())
    out = capsys.readouterr().out
    chosen = vals[by_csi]  # its MSE, step and CSI are printed
    assert f"best validation MSE {chosen['val_mse']:.2f} dBZ² at step {by_csi} " in out
    assert f"(best chosen on validation csi_40 {chosen['csi_40']:.3f})" in out
    assert result.metrics.read_text().count("\n") == lines  # no step was trained
    assert train_selecting("val_mse")[1]["step"] == by_mse
    bad = ["train", str(cube), "--config", str(config_file), "--out", str(run),
           "--select", "csi_25"]  # fmt: skip
    assert main(bad) == 2  # a usage error that says the value came from the command, not the file
    assert "[train] (overridden: select): TrainConfig.select='csi_25'" in capsys.readouterr().err


def test_mimcast_average_writes_the_mean_of_a_runs_kept_steps(cube, tmp_path, capsys):
    # `mimcast average RUN`: the element-wise mean of the kept steps in the last 40 % of the
    # schedule (20 and 30 of 30), with no validation scores claimed; with fewer than two kept
    # steps from --from, a usage error that lists the kept ones
    from mimcast.pipeline.cli import main

    config_file = tmp_path / "kept.toml"
    config_file.write_text(
        TINY_TOML.replace("val_every = 50", "val_every = 10\nkeep_validated = true")
    )
    run = tmp_path / "run"
    run_training([cube], run, load_run_config(config_file, max_steps=30), progress=False)
    assert main(["average", str(run)]) == 0
    assert f"averaged steps 20, 30: {run / 'average.safetensors'}" in capsys.readouterr().out
    model, extra = load_checkpoint(run / "average.safetensors")
    assert extra["averaged_steps"] == [20, 30] and extra["step"] == 30
    assert "val_mse" not in extra  # the average was not validated
    a, b = (load_checkpoint(run / f"step_{s:06d}.safetensors")[0].state_dict() for s in (20, 30))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two steps differ
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    forecaster = MIMNetForecaster(checkpoint=str(run / "average.safetensors"), device="cpu")
    assert "average.safetensors (steps 20-30 averaged, " in forecaster.describe()
    # a run that continued another's weights (init) averages every step it kept by default
    start = run / "step_000030.safetensors"
    tuned = tmp_path / "tuned"
    run_training([cube], tuned, load_run_config(config_file, max_steps=30, init=str(start)),
                 progress=False)  # fmt: skip
    assert main(["average", str(tuned)]) == 0
    assert "averaged steps 10, 20, 30:" in capsys.readouterr().out
    assert load_checkpoint(tuned / "average.safetensors")[1]["init"] == str(start)
    other = tmp_path / "x.safetensors"
    assert main(["average", str(run), "--from", "30", "--out", str(other)]) == 2
    assert "1 kept step(s) from step 30 (kept: 10, 20, 30)" in capsys.readouterr().err
    assert not other.exists()


def test_init_starts_a_run_from_a_checkpoints_weights(cube, config_file, tmp_path, capsys):
    # `mimcast train --init CKPT` (fine-tuning): the run starts from CKPT's weights, which one
    # step at lr 0 leaves exactly as they were (a fresh start does not), and every header names
    # CKPT; another [model] is refused, naming the file and the key; a resumed run reads its
    # own state, not CKPT (which may be gone by then)
    from mimcast.pipeline.cli import main

    base = tmp_path / "base"
    run_training([cube], base, load_run_config(config_file, max_steps=10), progress=False)
    start = base / "best.safetensors"
    still = tmp_path / "still.toml"
    still.write_text(TINY_TOML.replace("lr = 0.003", "lr = 0.0"))
    tune, fresh = tmp_path / "tune", tmp_path / "fresh"
    common = [str(cube), "--config", str(still), "--max-steps", "1"]
    assert main(["train", *common, "--init", str(start), "--out", str(tune)]) == 0
    assert main(["train", *common, "--out", str(fresh)]) == 0
    want = load_checkpoint(start)[0].state_dict()
    for run, same in ((tune, True), (fresh, False)):
        got, extra = load_checkpoint(run / "last.safetensors")
        equal = all(torch.equal(got.state_dict()[k], want[k]) for k in want)
        assert equal is same
        assert extra.get("init") == (str(start) if same else None)
    other = tmp_path / "other.toml"
    other.write_text(TINY_TOML.replace("num_hidden = 16", "num_hidden = 8"))
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["train", str(cube), "--config", str(other), "--init", str(start),
                 "--out", str(bad)]) == 1  # fmt: skip
    assert (f"{start}: cannot start this run from it: model num_hidden = 16, the run's [model] "
            "has 8") in capsys.readouterr().err  # fmt: skip
    assert not (bad / "state.safetensors").exists()
    start.rename(tmp_path / "moved.safetensors")
    assert main(["train", *common[:-1], "2", "--init", str(start), "--out", str(tune)]) == 0
    assert "trained to step 2" in capsys.readouterr().out
