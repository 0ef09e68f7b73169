"""Prefect flow ``nowcast``: the latest complete reference time in the cube -> NetCDF + maps.

The method comes from the forecaster registry (``mimnet`` by default). When the model cannot
be loaded (a missing or damaged checkpoint) the flow falls back to ``extrapolation`` and
says so in its log and artifacts, so an operator still gets a product.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed, Failed

from mimcast.flows.common import site_settings
from mimcast.models.checkpoint import CheckpointError
from mimcast.pipeline.defaults import FALLBACK_METHOD, MIN_STEP_MINUTES, NOWCAST_METHOD
from mimcast.pipeline.nowcast import (
    NoValidDataError,
    NowcastError,
    existing_product,
    run_nowcast,
)

_PERMANENT = (ValueError, CheckpointError, FileNotFoundError)  # no cube, no frames, bad input

nowcast_task = task(run_nowcast, name="run-nowcast", retries=1, retry_delay_seconds=10,
                    timeout_seconds=900,
                    retry_condition_fn=lambda t, r, state: not isinstance(
                        state.result(raise_on_failure=False), _PERMANENT))  # fmt: skip


@flow(name="nowcast", log_prints=False)
def nowcast_flow(
    cube: str | None = None,
    out_dir: str | None = None,
    checkpoint: str | None = None,
    postprocess: str | None = None,
    time: str = "latest",
    plot: bool = True,
    source: str | None = None,
    method: str = NOWCAST_METHOD,
    fallback: str | None = FALLBACK_METHOD,
    skip_existing: bool = True,
    geotiff: bool = False,
    min_step_minutes: float = MIN_STEP_MINUTES,
    refine: int | None = None,
):
    """Nowcast from the cube; without complete input frames, end as ``Skipped`` saying which.

    Inputs without a single valid pixel (a broken feed) end the run as ``Failed``, saying so.
    With ``skip_existing`` (the default, as for scheduled runs) a reference time that already
    has its product ends ``Skipped``: no new frame since the last nowcast. Paths not given
    come from the site settings. ``postprocess``: MIMNet's output post-processing ("none",
    "pm", "pm-wet", "pm-advected"); None: the checkpoint's default.
    """
    logger = get_run_logger()
    site = site_settings()
    cube, out_dir = cube or site.cube, out_dir or site.nowcasts
    kwargs = {"checkpoint": checkpoint or site.checkpoint, "postprocess": postprocess,
              "time": time, "plot": plot, "source": source, "geotiff": geotiff,
              "min_step_minutes": min_step_minutes, "refine": refine}  # fmt: skip
    if skip_existing:
        done = existing_product(cube, out_dir, method=method, checkpoint=kwargs["checkpoint"],
                                time=time, source=source,
                                min_step_minutes=min_step_minutes)  # fmt: skip
        if done is not None:
            logger.info("no new frame since the last product %s", done)
            return Completed(name="Skipped", message=f"no new frame since the last product: {done}")
    try:
        try:
            out = nowcast_task(cube, out_dir, method=method, **kwargs)
        except CheckpointError as err:
            if not fallback or fallback == method:
                raise
            logger.error("model unusable (%s); falling back to %s", err, fallback)
            create_markdown_artifact(f"**Model unusable**: {err}\n\nFell back to `{fallback}`.",
                                     key="nowcast-fallback")  # fmt: skip
            out = nowcast_task(cube, out_dir, method=fallback, **kwargs)
    except NoValidDataError as err:  # a broken feed: fail loudly, write nothing
        logger.error("no nowcast: %s", err)
        create_markdown_artifact(f"**Nowcast failed**: {err}", key="nowcast-failed")
        return Failed(message=f"no nowcast: {err}")
    except NowcastError as err:
        logger.warning("no nowcast: %s", err)
        create_markdown_artifact(f"**No nowcast**: {err}", key="nowcast-skipped")
        return Completed(name="Skipped", message=f"no nowcast: {err}")
    logger.info("%s nowcast from %s UTC written to %s", out.method, out.reference_time,
                out.netcdf)  # fmt: skip
    create_link_artifact(out.netcdf.resolve().as_uri(), link_text=out.netcdf.name,
                         key="nowcast-netcdf", description="CF-1.8 NetCDF nowcast")  # fmt: skip
    pictures = "\n".join(
        f"- `{p}`" for p in [*out.pngs, *([out.animation] if out.animation else [])]
    )
    create_markdown_artifact(
        f"{out.method} nowcast from **{out.reference_time} UTC**\n\n- NetCDF: `{out.netcdf}`\n"
        f"{pictures}\n", key="nowcast-files")  # fmt: skip
    return {"netcdf": str(out.netcdf), "reference_time": out.reference_time,
            "pngs": [str(p) for p in out.pngs], "method": out.method}  # fmt: skip
