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

    from mimcast.models.mimnet import MIMNet
    from mimcast.pipeline import forecasters
    from mimcast.pipeline.cube import open_cube
    from mimcast.pipeline.defaults import SHIPPED_CHECKPOINT
    from mimcast.pipeline.forecasters import MIMNetForecaster, get_forecaster
    from mimcast.pipeline.netcdf import write_nowcast
    from mimcast.pipeline.nowcast import NowcastOptions, nowcast
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube
    from mimcast.pipeline.training import load_run_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 700, 1024])
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for inference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["mimnet", "extrapolation"],
                        help="registered methods to time on the same cubes")  # fmt: skip
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ckpt = Path(args.checkpoint) if args.checkpoint else SHIPPED_CHECKPOINT

    def method(name: str, device: str):
        if name != "mimnet":
            return get_forecaster(name)
        if ckpt.exists():
            return MIMNetForecaster(str(ckpt), device=device, bf16=args.bf16)
        untrained = MIMNet(load_run_config().model).eval()
        return MIMNetForecaster.from_model(untrained, device=device, bf16=args.bf16)

    n_inputs = max(method(m, "cpu").input_frames for m in args.methods)
    for size in args.sizes:
        cube = synthetic_cube(SyntheticConfig(height=size, width=size, seed=1,
                                              frames=n_inputs))  # fmt: skip
        cube = cube.assign(observed=("time", np.ones(cube.sizes["time"], bool)))
        cube.attrs["time_step_minutes"] = 5
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "cube.zarr"
            cube.to_zarr(store, consolidated=False)
            for device, name in [(d, m) for d in devices for m in args.methods]:
                if name != "mimnet" and device != devices[0]:
                    continue  # baselines run on the CPU only
                fc = method(name, device)
                options = NowcastOptions(leads=12 if name != "mimnet" else None)
                times = []
                for _ in range(args.repeats + 1):  # the first run warms up
                    forecasters._RAW.clear()  # time the model, not its cache
                    start = time.perf_counter()
                    forecast = nowcast(open_cube(store), fc, options, source="bench")
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
                    "method": name,
                    "model": fc.describe() if name == "mimnet" else fc.description,
                    "leads": int(forecast.sizes["time"]),
                    "tiled": name == "mimnet" and size * size > fc.max_pixels,
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
