"""Prefect flow ``evaluate``: hindcast scores, one task per reference time on Dask."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mimcast.flows.common import dask_task_runner, site_settings
from mimcast.pipeline.defaults import EVALUATE_EVERY, EVALUATE_METHODS, MIN_STEP_MINUTES
from mimcast.pipeline.evaluation import (
    build_forecasters,
    finish_evaluation,
    plan_evaluation,
    score_reference_time,
)
from mimcast.pipeline.significance import verdict_lines

score_task = task(score_reference_time, name="score-reference-time", retries=1)


@flow(name="evaluate", task_runner=dask_task_runner(), log_prints=False)
def evaluate_flow(
    cube: str | None = None,
    out_dir: str | None = None,
    checkpoint: str | None = None,
    start: str | None = None,
    end: str | None = None,
    every: int = EVALUATE_EVERY,
    methods: list[str] | None = None,
    postprocess: str | None = None,
    min_step_minutes: float = MIN_STEP_MINUTES,
    refine: int | None = None,
) -> dict:
    """Score the methods (default MIMNet, persistence, extrapolation); write the report."""
    site = site_settings()
    cube, out_dir = cube or site.cube, out_dir or site.evaluation
    checkpoint = checkpoint or site.checkpoint
    forecasters = build_forecasters(tuple(methods or EVALUATE_METHODS), checkpoint=checkpoint,
                                    postprocess=postprocess,
                                    min_step_minutes=min_step_minutes,
                                    refine=refine)  # fmt: skip
    plan = plan_evaluation(cube, forecasters, start=start, end=end, every=every)
    get_run_logger().info("scoring %d reference times on Dask", len(plan.refs))
    futures = [score_task.submit(plan, ref) for ref in plan.refs]
    outputs = finish_evaluation(plan, [f.result() for f in futures], out_dir)
    table = [r for r in outputs.rows if r["metric"] in ("MSE", "CSI") and
             r["threshold"] in ("", "30 dBZ")]  # fmt: skip
    md = ["| method | lead (min) | metric | value |", "|---|---|---|---|"] + [
        f"| {r['method']} | {r['lead_time']} | {r['metric']} {r['threshold']} | {r['value']:.3f} |"
        for r in sorted(table, key=lambda r: (r["metric"], r["lead_time"], r["method"]))
    ]
    md += ["", *(f"- {line}" for line in verdict_lines(outputs.differences))]
    create_markdown_artifact("\n".join(md), key="hindcast-scores",
                             description=f"{outputs.n_forecasts} forecasts per method")  # fmt: skip
    return {"scores": str(outputs.scores_csv), "report": str(outputs.report),
            "forecasts": outputs.n_forecasts,
            "differences": str(outputs.scores_csv.with_name("differences.csv"))}  # fmt: skip
