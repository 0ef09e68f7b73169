"""Prefect flow ``ingest``: new radar files into the cube, scans fanned out over Dask."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mimcast.flows.common import dask_task_runner, site_settings
from mimcast.pipeline.ingest import IngestOptions, discover, ingest, report_path, scan_file
from mimcast.pipeline.readers import ZR
from mimcast.pipeline.zr import MARSHALL_PALMER


def _transient(error) -> bool:
    """I/O errors may pass; a missing file, a busy or unusable cube will not on a retry."""
    from mimcast.pipeline.ingest import CubeBusyError

    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError | CubeBusyError)


scan_task = task(scan_file, name="scan-file", retries=2, retry_delay_seconds=5)


@task(
    name="write-cube", retries=3, retry_delay_seconds=10, timeout_seconds=3600,
    retry_condition_fn=lambda task, run, state: _transient(state.result(raise_on_failure=False)),
)  # fmt: skip
def write_task(paths: list[str], cube: str, options: IngestOptions, scans: list[dict]):
    """Order, deduplicate and write the scanned frames (retried on I/O errors)."""
    return ingest(paths, cube, options, scans=scans)


@flow(name="ingest", task_runner=dask_task_runner(), log_prints=False)
def ingest_flow(
    paths: list[str] | None = None,
    cube: str | None = None,
    format: str = "auto",
    zr_a: float = MARSHALL_PALMER.a,
    zr_b: float = MARSHALL_PALMER.b,
    step_minutes: int | None = None,
    max_gap_minutes: int = IngestOptions.max_gap_minutes,
    wait_s: float = IngestOptions.wait_s,
) -> dict:
    """Ingest new files (default: the site's incoming folder) into the cube (the site's)."""
    logger = get_run_logger()
    site = site_settings()
    paths = paths or [site.incoming]
    cube = cube or site.cube
    options = IngestOptions(format=format, zr=ZR(zr_a, zr_b), step_minutes=step_minutes,
                            max_gap_minutes=max_gap_minutes, wait_s=wait_s)  # fmt: skip
    files, problems = discover(paths)
    for problem in problems:
        logger.warning("%s: %s", problem["file"], problem["reason"])
    if not files:
        logger.warning("no files to ingest in %s", ", ".join(paths))
        return {"status": "nothing to ingest", "files": 0}
    futures = scan_task.map(files, options=options)
    scans = [f.result() for f in futures]
    report = write_task(paths, cube, options, scans)
    logger.info(
        "%s: %d new frames, %d gaps filled, %d unchanged, %d skipped",
        report.status, report.new_frames, report.filled_gaps, report.unchanged,
        len(report.skipped),
    )  # fmt: skip
    lines = [f"**{report.status}**: {report.new_frames} new frames, {report.unchanged} unchanged,"
             f" {len(report.skipped)} skipped, {len(report.gaps)} gaps", ""]  # fmt: skip
    lines += [f"- skipped `{s['file']}`: {s['reason']}" for s in report.skipped]
    lines += ["", f"cube: `{cube}`, report: `{report_path(cube)}`"]
    create_markdown_artifact("\n".join(lines), key="ingest-report", description="ingest run")
    return {"status": report.status, "new_frames": report.new_frames,
            "skipped": len(report.skipped), "report": str(report_path(cube))}  # fmt: skip
