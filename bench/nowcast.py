"""Benchmark end-to-end nowcast latency: Zarr cube -> MIMNet on the full grid -> CF NetCDF.

Usage::

    python bench/nowcast.py                           # 256, 700, 1024 px; CPU (+ CUDA)
    python bench/nowcast.py --sizes 256 --devices cpu --checkpoint run/best.safetensors

For each domain size a synthetic cube with the model's ``input_length`` frames is written to a
temporary Zarr store; the timed part opens it, runs :func:`pipeline.nowcast.nowcast` (tiling
above the memory budget) and writes the NetCDF. One JSON object per line; never an assertion
on time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import numpy as np
    import torch

    from mimcast.models.checkpoint import load_checkpoint
    from mimcast.models.mimnet import MIMNet
    from mimcast.pipeline.ingest import open_cube
    from mimcast.pipeline.netcdf import write_nowcast
    from mimcast.pipeline.nowcast import NowcastOptions, nowcast
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube
    from mimcast.pipeline.training import SHIPPED_CHECKPOINT, load_run_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 700, 1024])
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for inference")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ckpt = Path(args.checkpoint) if args.checkpoint else SHIPPED_CHECKPOINT
    if ckpt.exists():
        model, _ = load_checkpoint(ckpt)
        model_name = ckpt.name
    else:
        model = MIMNet(load_run_config().model).eval()
        model_name = "untrained data/train.toml model"
    for size in args.sizes:
        cube = synthetic_cube(SyntheticConfig(height=size, width=size, seed=1,
                                              frames=model.config.input_length))  # fmt: skip
        cube = cube.assign(observed=("time", np.ones(cube.sizes["time"], bool)))
        cube.attrs["time_step_minutes"] = 5
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "cube.zarr"
            cube.to_zarr(store, consolidated=False)
            for device in devices:
                options = NowcastOptions(device=device, bf16=args.bf16)
                times = []
                for _ in range(args.repeats + 1):  # the first run warms up
                    start = time.perf_counter()
                    forecast = nowcast(open_cube(store), model, options, source="bench")
                    path = write_nowcast(forecast, Path(tmp) / "out", source="bench")
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                row = {
                    "grid": [size, size],
                    "device": device,
                    "device_name": torch.cuda.get_device_name() if device.startswith("cuda")
                    else "cpu",
                    "threads": torch.get_num_threads(),
                    "bf16": args.bf16,
                    "model": model_name,
                    "leads": model.config.output_length,
                    "tiled": size * size > options.max_pixels,
                    "latency_s": round(min(times[1:]), 3),
                    "first_run_s": round(times[0], 3),
                    "netcdf_mb": round(path.stat().st_size / 2**20, 2),
                    "peak_rss_mb": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                }  # fmt: skip
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
