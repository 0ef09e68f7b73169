"""Prefect flow ``nowcast``: the latest complete reference time in the cube -> NetCDF + maps."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed

from flows.common import DEFAULT_CUBE, DEFAULT_NOWCASTS
from flows.jobs import run_nowcast
from pipeline.nowcast import NowcastError

nowcast_task = task(run_nowcast, name="run-nowcast", retries=1, retry_delay_seconds=10,
                    timeout_seconds=900,
                    retry_condition_fn=lambda t, r, state: not isinstance(
                        state.result(raise_on_failure=False), NowcastError))  # fmt: skip


@flow(name="nowcast", log_prints=False)
def nowcast_flow(
    cube: str = DEFAULT_CUBE,
    out_dir: str = DEFAULT_NOWCASTS,
    checkpoint: str | None = None,
    time: str = "latest",
    plot: bool = True,
    source: str | None = None,
):
    """Nowcast from the cube; without complete input frames, end as ``Skipped`` saying which."""
    logger = get_run_logger()
    try:
        out = nowcast_task(cube, out_dir, checkpoint=checkpoint, time=time, plot=plot,
                           source=source)  # fmt: skip
    except NowcastError as err:
        logger.warning("no nowcast: %s", err)
        create_markdown_artifact(f"**No nowcast**: {err}", key="nowcast-skipped")
        return Completed(name="Skipped", message=f"no nowcast: {err}")
    logger.info("nowcast from %s UTC written to %s", out.reference_time, out.netcdf)
    create_link_artifact(out.netcdf.resolve().as_uri(), link_text=out.netcdf.name,
                         key="nowcast-netcdf", description="CF-1.8 NetCDF nowcast")  # fmt: skip
    pictures = "\n".join(
        f"- `{p}`" for p in [*out.pngs, *([out.animation] if out.animation else [])]
    )
    create_markdown_artifact(
        f"Nowcast from **{out.reference_time} UTC**\n\n- NetCDF: `{out.netcdf}`\n{pictures}\n",
        key="nowcast-files")  # fmt: skip
    return {"netcdf": str(out.netcdf), "reference_time": out.reference_time,
            "pngs": [str(p) for p in out.pngs]}  # fmt: skip
