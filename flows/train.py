"""Prefect flow ``train``: train MIMNet on cubes (resumes when the run directory has a state)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mimcast.flows.common import site_settings
from mimcast.pipeline.training import load_run_config, run_training


@task(name="train-mimnet", retries=1, retry_delay_seconds=30, timeout_seconds=24 * 3600)
def train_task(cubes: list[str], out_dir: str, config_path: str | None, max_steps: int | None,
               deadline_s: float | None = None):  # fmt: skip
    """Train (a retry resumes from the last saved state)."""
    config = load_run_config(config_path, max_steps=max_steps)
    return run_training(cubes, out_dir, config, progress=False, deadline_s=deadline_s)


@flow(name="train", log_prints=False)
def train_flow(
    cubes: list[str] | None = None,
    out_dir: str | None = None,
    config: str | None = None,
    max_steps: int | None = None,
    deadline_s: float | None = None,
) -> dict:
    """Train MIMNet; the run directory gets checkpoints, metrics and curves.

    ``deadline_s``: stop after this long, checkpointed; the next run of the flow with the
    same ``out_dir`` goes on (training in nightly slots, say).
    """
    site = site_settings()
    result = train_task(cubes or [site.cube], out_dir or site.runs, config, max_steps,
                        deadline_s)  # fmt: skip
    stopped = " (stopped at the deadline; the next run goes on)" if result.stopped else ""
    get_run_logger().info("trained to step %d%s, best validation MSE %s", result.step, stopped,
                          result.best_val_mse)  # fmt: skip
    create_markdown_artifact(
        f"Trained to step **{result.step}**{stopped}; best validation MSE "
        f"{result.best_val_mse}\n\n"
        f"- best: `{result.best}`\n- last: `{result.last}`\n- curves: `{result.curves}`\n",
        key="train-result")  # fmt: skip
    return {"step": result.step, "best": str(result.best), "best_val_mse": result.best_val_mse,
            "stopped": result.stopped}  # fmt: skip
