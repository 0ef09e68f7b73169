"""Deployments of the four flows, served from one process (no work pool needed).

``mimcast serve`` registers ``ingest/mimcast``, ``nowcast/mimcast``, ``evaluate/mimcast`` and
``train/mimcast`` with the Prefect API (``PREFECT_API_URL``) and runs whatever is scheduled or
triggered, e.g. ``prefect deployment run nowcast/mimcast``. The nowcast (and ingest) runs every
5 minutes by default; each deployment has a concurrency limit of one with ``CANCEL_NEW``, so
overlapping runs never pile up: a run due while the previous one still works is cancelled.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from mimcast.flows.evaluate import evaluate_flow
from mimcast.flows.ingest import ingest_flow
from mimcast.flows.nowcast import nowcast_flow
from mimcast.flows.train import train_flow

DEPLOYMENT = "mimcast"
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def deployments(
    *,
    cube: str | None = None,
    incoming: str | None = None,
    out_dir: str | None = None,
    evaluation_dir: str | None = None,
    checkpoint: str | None = None,
    interval_minutes: float | None = 5.0,
) -> list:
    """Return the RunnerDeployments; ``interval_minutes=None`` leaves them unscheduled.

    Paths left ``None`` are not fixed in the deployment: each run reads the site settings.
    """
    every = timedelta(minutes=interval_minutes) if interval_minutes else None
    common = {"concurrency_limit": ONE_AT_A_TIME, "tags": ["mimcast"]}
    return [
        ingest_flow.to_deployment(
            name=DEPLOYMENT, interval=every,
            parameters=_given(paths=[incoming] if incoming else None, cube=cube),
            description="new radar files into the cube", **common,
        ),
        nowcast_flow.to_deployment(
            name=DEPLOYMENT, interval=every,
            parameters=_given(cube=cube, out_dir=out_dir, checkpoint=checkpoint),
            description="latest complete reference time -> CF NetCDF and quicklooks", **common,
        ),
        evaluate_flow.to_deployment(
            name=DEPLOYMENT, cron="30 0 * * *" if every else None,
            parameters=_given(cube=cube, out_dir=evaluation_dir, checkpoint=checkpoint),
            description="daily hindcast against persistence and extrapolation", **common,
        ),
        train_flow.to_deployment(
            name=DEPLOYMENT, parameters=_given(cubes=[cube] if cube else None),
            description="train MIMNet", **common,
        ),
    ]  # fmt: skip


def _given(**parameters) -> dict:
    return {k: v for k, v in parameters.items() if v is not None}


def serve_all(**kwargs) -> None:
    """Serve every deployment from this process until interrupted."""
    serve(*deployments(**kwargs), print_starting_message=True)
