"""Prefect flow ``demo``: the whole job on an embedded default, end to end.

Synthesise a storm archive (ODIM_H5), ingest it into a cube, nowcast with the shipped
checkpoint (or a small model trained first with ``train=True``), and evaluate MIMNet against
persistence and extrapolation. Each stage is the production flow, run as a subflow; with no
``PREFECT_API_URL`` set, Prefect runs them in its ephemeral mode (no server to start).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from mimcast.flows.evaluate import evaluate_flow
from mimcast.flows.ingest import ingest_flow
from mimcast.flows.nowcast import nowcast_flow
from mimcast.flows.train import train_flow
from mimcast.pipeline.defaults import SYNTHETIC_CHECKPOINT
from mimcast.pipeline.synthetic import SyntheticConfig, write_archive


@task(name="synthesise-archive")
def synth_task(out: str, frames: int, size: int, seed: int) -> str:
    """Write the synthetic ODIM_H5 archive."""
    config = SyntheticConfig(frames=frames, height=size, width=size, seed=seed)
    paths = write_archive(config, out, progress=True)
    return str(Path(paths[0]).parent)


@flow(name="demo", log_prints=False)
def demo_flow(
    out: str = "data/local/demo",
    frames: int = 96,
    size: int = 192,
    seed: int = 7,
    train: bool = False,
    max_steps: int = 120,
    every: int = 6,
) -> dict:
    """Run synthesise -> ingest -> (train) -> nowcast -> evaluate into ``out``."""
    logger = get_run_logger()
    root = Path(out).resolve()
    archive = synth_task(str(root / "archive"), frames, size, seed)
    logger.info("1/4 archive: %s", archive)
    cube = str(root / "cube.zarr")
    ingest_flow(paths=[archive], cube=cube)
    logger.info("2/4 cube: %s", cube)
    checkpoint = str(SYNTHETIC_CHECKPOINT)
    if train:
        result = train_flow(cubes=[cube], out_dir=str(root / "run"), max_steps=max_steps)
        checkpoint = result["best"]
        logger.info("   trained %d steps: %s", result["step"], checkpoint)
    nowcast = nowcast_flow(cube=cube, out_dir=str(root / "nowcasts"), checkpoint=checkpoint,
                           plot=True, source="demo")  # fmt: skip
    logger.info("3/4 nowcast: %s", nowcast["netcdf"])
    evaluation = evaluate_flow(cube=cube, out_dir=str(root / "evaluation"),
                               checkpoint=checkpoint, every=every)  # fmt: skip
    logger.info("4/4 evaluation: %s", evaluation["report"])
    return {"archive": archive, "cube": cube, "checkpoint": checkpoint, **nowcast,
            "scores": evaluation["scores"], "report": evaluation["report"]}  # fmt: skip
