"""Prefect flows: logic under prefect_test_harness, and end to end on a real Prefect server."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from mimcast.models.checkpoint import InputConfig, save_checkpoint
from mimcast.models.mimnet import MIMNet, MIMNetConfig
from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube, write_archive

REPO = Path(__file__).resolve().parents[1]
TINY = MIMNetConfig(input_length=4, output_length=3, num_layers=2, num_hidden=8, filter_size=3,
                    patch_size=4)  # fmt: skip


@pytest.fixture(scope="session")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("flows")
    cube = synthetic_cube(SyntheticConfig(height=48, width=64, frames=14, seed=9))
    cube.to_zarr(root / "cube.zarr", consolidated=False)
    holey = cube.copy(deep=True)
    observed = np.ones(14, bool)
    observed[-2] = False
    holey["observed"] = ("time", observed)
    holey.to_zarr(root / "holey.zarr", consolidated=False)
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        MIMNet(TINY), root / "tiny.safetensors", extra={"step": 1}, inputs=InputConfig(0.0, 70.0)
    )
    return root, ckpt


def test_deployments_schedules_and_concurrency():
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from mimcast.flows.serve import deployments

    deps = {d.flow_name: d for d in deployments(interval_minutes=5)}
    assert set(deps) == {"ingest", "nowcast", "evaluate", "train"}
    assert all(d.name == "mimcast" for d in deps.values())
    nowcast = deps["nowcast"]
    assert nowcast.schedules[0].schedule.interval.total_seconds() == 300
    limit = nowcast.concurrency_options
    assert nowcast.concurrency_limit == 1
    assert limit.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert not deps["train"].schedules
    unscheduled = {d.flow_name: d for d in deployments(interval_minutes=None)}
    assert not unscheduled["nowcast"].schedules


def test_nowcast_flow_writes_netcdf_and_artifacts(harness, assets):
    from prefect.client.orchestration import get_client

    from mimcast.flows.nowcast import nowcast_flow

    root, ckpt = assets
    result = nowcast_flow(cube=str(root / "cube.zarr"), out_dir=str(root / "out"),
                          checkpoint=str(ckpt), plot=False, postprocess="pm-wet")  # fmt: skip
    assert Path(result["netcdf"]).name == "nowcast_cube_202407011305.nc"
    assert Path(result["netcdf"]).exists()
    with xr.open_dataset(result["netcdf"]) as ds:  # the operator's choice reached the model
        assert "post-processing pm-wet" in ds.attrs["source"]

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    import asyncio

    keys = {a.key for a in asyncio.run(artifacts())}
    assert {"nowcast-netcdf", "nowcast-files"} <= keys


def test_nowcast_flow_with_missing_inputs_ends_skipped_and_says_which(harness, assets):
    from mimcast.flows.nowcast import nowcast_flow

    root, ckpt = assets
    state = nowcast_flow(
        cube=str(root / "holey.zarr"), out_dir=str(root / "out2"), checkpoint=str(ckpt),
        time="2024-07-01T13:05", return_state=True,
    )  # fmt: skip
    assert state.is_completed() and state.name == "Skipped"
    assert "2024-07-01T13:00" in state.message and "missing" in state.message
    assert not (root / "out2").exists() or not list((root / "out2").glob("*.nc"))


def test_nowcast_flow_without_a_valid_input_pixel_fails_and_says_why(harness, assets, tmp_path):
    import xarray as xr

    from mimcast.flows.nowcast import nowcast_flow

    root, ckpt = assets
    cube = xr.open_zarr(root / "cube.zarr", consolidated=False).load()
    cube["reflectivity"][-1] = np.nan  # the newest frame arrived empty: a broken feed
    cube.to_zarr(tmp_path / "empty_last.zarr", consolidated=False)
    state = nowcast_flow(cube=str(tmp_path / "empty_last.zarr"), out_dir=str(tmp_path / "out"),
                         checkpoint=str(ckpt), plot=False, return_state=True)  # fmt: skip
    assert state.is_failed() and "no valid pixel" in state.message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nc"))


def test_parameterless_runs_use_the_site_settings_and_skip_what_is_done(
    harness, assets, tmp_path, monkeypatch
):
    from mimcast.flows.nowcast import nowcast_flow

    root, ckpt = assets
    site = tmp_path / "mimcast.toml"  # the operator's one-time setting
    site.write_text(f'[paths]\ncube = "{root / "cube.zarr"}"\nnowcasts = "{tmp_path / "out"}"\n')
    monkeypatch.setenv("MIMCAST_CONFIG", str(site))
    monkeypatch.setenv("MIMCAST_CHECKPOINT", str(ckpt))  # the environment wins over the file
    first = nowcast_flow(plot=False, return_state=True)  # as a scheduled run: no parameters
    assert first.is_completed() and first.name == "Completed"
    assert [p.name for p in (tmp_path / "out").glob("*.nc")] == ["nowcast_cube_202407011305.nc"]
    again = nowcast_flow(plot=False, return_state=True)
    assert again.name == "Skipped" and "no new frame since the last product" in again.message


def test_a_missing_cube_fails_at_once_without_retries(harness, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from mimcast.flows.nowcast import nowcast_flow

    state = nowcast_flow(cube=str(tmp_path / "none.zarr"), out_dir=str(tmp_path / "out"),
                         method="persistence", plot=False, return_state=True)  # fmt: skip
    assert state.is_failed() and "no such cube" in state.message

    async def task_runs():
        async with get_client() as client:
            flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            return await client.read_task_runs(flow_run_filter=flow_filter)

    (run,) = asyncio.run(task_runs())
    assert run.run_count == 1  # a permanent error: not retried


def test_ingest_flow_fans_out_scans_on_dask(harness, tmp_path):
    from mimcast.flows.ingest import ingest_flow

    archive = tmp_path / "incoming"
    write_archive(SyntheticConfig(height=32, width=40, frames=5, seed=2), archive)
    (archive / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    result = ingest_flow(paths=[str(archive)], cube=str(tmp_path / "c.zarr"))
    assert result["status"] == "partial" and result["new_frames"] == 5
    assert result["skipped"] == 1
    again = ingest_flow(paths=[str(archive)], cube=str(tmp_path / "c.zarr"))
    assert again["new_frames"] == 0
    for f in sorted(archive.glob("synthetic_*.h5"))[2:3]:  # a 10-minute gap: a break, unfilled
        f.unlink()
    ingest_flow(paths=[str(archive)], cube=str(tmp_path / "d.zarr"), max_gap_minutes=0)
    report = json.loads((tmp_path / "d.ingest.json").read_text())
    assert report["gaps"] == [] and len(report["breaks"]) == 1


def test_evaluate_flow_scores_every_reference_time(harness, assets):
    from mimcast.flows.evaluate import evaluate_flow

    root, ckpt = assets
    result = evaluate_flow(cube=str(root / "cube.zarr"), out_dir=str(root / "eval"),
                           checkpoint=str(ckpt), every=2)  # fmt: skip
    assert result["forecasts"] == 4  # references 3..10 of 14 frames, every 2nd
    text = Path(result["scores"]).read_text()
    assert "mimnet" in text and "extrapolation" in text and "persistence" in text
    # the model against each baseline per lead, from the per-reference-time scores the tasks
    # returned: four reference times 10 minutes apart overlap, so no interval is claimed
    with open(result["differences"]) as fh:
        diffs = list(csv.DictReader(fh))
    assert {(r["method"], r["baseline"]) for r in diffs} == {
        ("mimnet", "persistence"), ("mimnet", "extrapolation")}  # fmt: skip
    assert diffs and {r["verdict"] for r in diffs} == {"too few"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _registered(api: str, name: str) -> bool:
    try:
        return _get(f"{api}/deployments/name/{name}")["name"] == name.split("/")[1]
    except urllib.error.HTTPError as err:  # 404 until serve has registered it
        if err.code != 404:
            raise
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_deployment(prefect: str, env: dict, api: str, runner, log: Path) -> dict:
    """Trigger ``nowcast/mimcast`` without parameters; return the flow run once it ended."""
    run = subprocess.run([prefect, "deployment", "run", "nowcast/mimcast"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    run_id = next(line.split()[-1] for line in run.stdout.splitlines() if "UUID" in line)
    deadline = time.monotonic() + 300
    while True:
        flow_run = _get(f"{api}/flow_runs/{run_id}")
        if flow_run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return flow_run
        assert runner.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"flow run stuck in {flow_run['state']['type']}"
        time.sleep(1)


@pytest.mark.slow
def test_end_to_end_real_server_serve_and_deployment_run(assets, tmp_path):
    root, ckpt = assets
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api,
           "PREFECT_UI_ENABLED": "false",
           # serve and the worker look for due runs every 2 s instead of every 10 s
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_WORKER_QUERY_SECONDS": "2"}  # fmt: skip
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=(logs / "server.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    serve = worker = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _get(f"{api}/health") is True:
                    break
            except OSError:
                pass
            assert server.poll() is None, (logs / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(1)
        out = tmp_path / "nowcasts"
        serve = subprocess.Popen(
            [sys.executable, "-m",
            "mimcast.pipeline.cli", "serve", "--cube", str(root / "cube.zarr"),
             "--out", str(out), "--checkpoint", str(ckpt), "--no-schedule"],
            env=env, cwd=REPO, stdout=(logs / "serve.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while not _registered(api, "nowcast/mimcast"):  # what 'prefect deployment inspect' asks
            assert serve.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "deployment never registered"
            time.sleep(1)
        state = _run_deployment(prefect, env, api, serve, logs / "serve.log")["state"]
        assert state["type"] == "COMPLETED", (logs / "serve.log").read_text()[-3000:]
        assert [p.name for p in out.glob("*.nc")] == ["nowcast_cube_202407011305.nc"]
        _stop(serve)

        # the work-pool path: prefect.yaml deployments carry no parameters; the worker's
        # environment holds the operator's one-time setting, which every run then uses
        pool = subprocess.run([prefect, "work-pool", "create", "mimcast", "--type", "process"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        site_out = tmp_path / "site-nowcasts"
        site = {"MIMCAST_CUBE": str(root / "cube.zarr"), "MIMCAST_NOWCASTS": str(site_out),
                "MIMCAST_CHECKPOINT": str(ckpt)}  # fmt: skip
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", "mimcast"], env={**env, **site},
            cwd=tmp_path, stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        flow_run = _run_deployment(prefect, env, api, worker, logs / "worker.log")
        assert flow_run["parameters"] == {}  # like a scheduled run
        assert flow_run["state"]["type"] == "COMPLETED", (logs / "worker.log").read_text()[-3000:]
        assert [p.name for p in site_out.glob("*.nc")] == ["nowcast_cube_202407011305.nc"]
    finally:
        if serve is not None:
            _stop(serve)  # serve and worker first, then the server, by PID
        if worker is not None:
            _stop(worker)
        _stop(server)
    assert server.poll() is not None and (serve is None or serve.poll() is not None)
    assert worker is None or worker.poll() is not None


def test_nowcast_flow_falls_back_to_extrapolation_when_the_model_is_unusable(harness, assets):
    from mimcast.flows.nowcast import nowcast_flow
    from mimcast.pipeline.netcdf import read_nowcast

    root, _ = assets
    broken = root / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    result = nowcast_flow(cube=str(root / "cube.zarr"), out_dir=str(root / "fallback"),
                          checkpoint=str(broken), plot=False)  # fmt: skip
    assert result["method"] == "extrapolation"
    with read_nowcast(result["netcdf"]) as ds:
        assert "extrapolation" in ds.attrs["source"]
        assert ds.sizes["time"] == 12  # the registry's default horizon for baselines


def test_train_flow_trains_and_reports_its_checkpoints(harness, assets, tmp_path):
    from mimcast.flows.train import train_flow

    root, _ = assets
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nnum_layers = 2\nnum_hidden = 8\nfilter_size = 3\npatch_size = 4\n"
        "[data]\ninput_length = 3\noutput_length = 2\npatch = 32\nstride = 16\n"
        "min_coverage = 0.0\ntrain = 0.45\nval = 0.5\nbuffer = 0\n"
        "[train]\nbatch_size = 2\nval_every = 2\nval_batches = 1\nbf16 = false\n"
    )
    run = {"cubes": [str(root / "cube.zarr")], "out_dir": str(tmp_path / "run"),
           "config": str(config), "max_steps": 2}  # fmt: skip
    first = train_flow(**run, deadline_s=0.001)  # a slot that ends at once: one step
    assert first["step"] == 1 and first["stopped"] and Path(first["best"]).exists()
    result = train_flow(**run)  # the next run goes on from the checkpoint
    assert result["step"] == 2 and not result["stopped"] and Path(result["best"]).exists()
    assert result["best_val_mse"] is not None and np.isfinite(result["best_val_mse"])
