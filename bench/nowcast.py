"""Benchmark end-to-end nowcast latency: Zarr cube -> MIMNet on the full grid -> CF NetCDF.

Usage::

    python bench/nowcast.py                           # 256, 700, 1024 px; CPU (+ CUDA)
    python bench/nowcast.py --sizes 256 --devices cpu --checkpoint run/best.safetensors

For each domain size a synthetic cube with the model's ``input_length`` frames is written to a
temporary Zarr store; the timed part opens it, runs :func:`pipeline.nowcast.nowcast` (tiling
above the memory budget) and writes the NetCDF. Every method runs on the same cube in the same
process (pysteps extrapolation by default beside MIMNet), and a ``ratio`` line per grid gives
MIMNet's latency over extrapolation's. For MIMNet the network alone is also timed and its
floating-point work counted (``torch.utils.flop_counter``), against the machine's measured
peak for convolutions and matrix products at the same precision (a ``peak`` line first).
One JSON object per line; never an assertion on time.

``--network-only`` times the network alone (the ``network_s`` figures) on synthetic echo
fields, with no cube, NetCDF or baseline: for a machine that has torch but not the I/O stack
(zarr, netCDF4, pyproj, pysteps), such as a borrowed GPU box. With ``--compile`` it then
compiles the model's step (``torch.compile``) and times it again (``eager_network_s`` beside
``network_s``; the first compiled call, which compiles, is not timed).
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
STEP_MINUTES = 5.0  # the synthetic frames' step
sys.path.insert(0, str(ROOT))


def measured_peak(device: str, bf16: bool, repeats: int = 5) -> dict:
    """FLOP/s of a large 3x3 convolution and a large matrix product on ``device``."""
    import torch

    from mimcast.models.mimnet import autocast

    dev = torch.device(device)
    x = torch.randn(4, 128, 96, 96, device=dev)
    conv = torch.nn.Conv2d(128, 512, 5, padding=2).to(dev).eval()
    a = torch.randn(2048, 2048, device=dev)
    out = {}
    for name, fn, flops in (
        ("conv", lambda: conv(x), 2 * 4 * 512 * 96 * 96 * 128 * 25),
        ("matmul", lambda: a @ a, 2 * 2048**3),
    ):
        with torch.inference_mode(), autocast(dev, bf16):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        out[f"{name}_gflops_per_s"] = round(flops / min(times) / 1e9, 1)
    return out


def model_work(fc, inputs, device: str) -> tuple[float, float]:
    """Seconds and GFLOP of the network alone on ``inputs`` (normalised, Eulerian frame), on
    the grid it runs on (``fc.grid_refine`` times finer than the inputs')."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mimcast.pipeline.forecasters import refined
    from mimcast.pipeline.nowcast import predict
    from mimcast.pipeline.sequences import Normalizer

    ckpt = fc.loaded
    x, _ = Normalizer(ckpt.inputs.dbz_min, ckpt.inputs.dbz_max).normalize(
        refined(inputs, fc.grid_refine)
    )
    # a step-aware model needs the frames' step; others ignore it
    predict(ckpt.model, x, fc, STEP_MINUTES)  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        predict(ckpt.model, x, fc, STEP_MINUTES)
    start = time.perf_counter()
    predict(ckpt.model, x, fc, STEP_MINUTES)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, counter.get_total_flops() / 1e9


def print_peaks(devices: list[str], bf16: bool) -> dict[str, float]:
    """Measure and print each device's peak (one ``peak`` line each); the best per device."""
    import torch

    from mimcast.models.device import bf16_native

    best = {}
    for d in devices:
        peak = measured_peak(d, bf16)
        print(json.dumps({"peak": d, "bf16": bf16 and bf16_native(d),
                          "threads": torch.get_num_threads(), **peak}), flush=True)  # fmt: skip
        best[d] = max(peak.values())
    return best


def device_label(device: str) -> str:
    """The GPU's name for a CUDA device, else ``cpu``."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def echo_frames(n: int, size: int, seed: int = 0):
    """``n`` frames of smooth echo (dBZ, about 0-55, a third of the grid dry), moving slowly."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal((size + 2 * n, size + 2 * n)), size / 32)
    field = (field - field.mean()) / field.std()
    frames = [np.clip(25 + 15 * field[k : k + size, k : k + size], 0, 60) for k in range(n)]
    return np.stack(frames).astype(np.float32)


def network_only(args, devices: list[str], ckpt: Path) -> int:
    """The network alone per grid and device, against the measured peak (``--network-only``)."""
    import torch

    from mimcast.models.device import bf16_native
    from mimcast.models.mimnet import compile_step
    from mimcast.pipeline.forecasters import MIMNetForecaster

    peaks = print_peaks(devices, args.bf16)
    for size in args.sizes:
        for device in devices:
            fc = MIMNetForecaster(str(ckpt), device=device, bf16=args.bf16, refine=args.refine)
            inputs = echo_frames(fc.input_frames, size, seed=size)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)  # this grid's peak, not the run's
            runs = [model_work(fc, inputs, device) for _ in range(args.repeats)]
            seconds, gflop = min(r[0] for r in runs), runs[0][1]
            eager_s = None
            if args.compile:  # the same work (counted eagerly above), through a compiled step
                compile_step(fc.loaded.model)
                runs = [model_work(fc, inputs, device) for _ in range(args.repeats + 1)]
                eager_s, seconds = seconds, min(r[0] for r in runs[1:])  # the first compiles
            best = peaks[device]
            print(json.dumps({
                "grid": [size, size], "device": device, "device_name": device_label(device),
                "threads": torch.get_num_threads(), "bf16": args.bf16 and bf16_native(device),
                "model": fc.describe(), "refine": fc.grid_refine,
                "tiled": (size * fc.grid_refine) ** 2 > fc.max_pixels,
                "compiled": args.compile,
                **({"eager_network_s": round(eager_s, 4)} if eager_s is not None else {}),
                "network_s": round(seconds, 4), "gflop": round(gflop, 1),
                "gflops_per_s": round(gflop / seconds, 1),
                "fraction_of_peak": round(gflop / seconds / best, 3),
                "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if device.startswith("cuda") else None,
            }), flush=True)  # fmt: skip
    return 0


def main(argv=None) -> int:
    import torch

    from mimcast.models.device import bf16_native
    from mimcast.models.mimnet import MIMNet
    from mimcast.pipeline.defaults import SHIPPED_CHECKPOINT
    from mimcast.pipeline.training import load_run_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 700, 1024])
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for inference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["mimnet", "extrapolation"],
                        help="registered methods to time on the same cubes")  # fmt: skip
    parser.add_argument("--refine", type=int, default=None,
                        help="MIMNet runs on a grid K times finer, K^2 the arithmetic (default: "
                        "auto: 1 on these synthetic 1-km grids)")  # fmt: skip
    parser.add_argument("--network-only", action="store_true",
                        help="time the network alone: no cube, NetCDF or baselines")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="with --network-only: also time it through torch.compile")  # fmt: skip
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ckpt = Path(args.checkpoint) if args.checkpoint else SHIPPED_CHECKPOINT
    if args.network_only:
        return network_only(args, devices, ckpt)

    from mimcast.pipeline import forecasters
    from mimcast.pipeline.cube import open_cube
    from mimcast.pipeline.forecasters import MIMNetForecaster, get_forecaster
    from mimcast.pipeline.netcdf import write_nowcast
    from mimcast.pipeline.nowcast import NowcastOptions, nowcast
    from mimcast.pipeline.synthetic import SyntheticConfig, synthetic_cube

    def method(name: str, device: str):
        if name != "mimnet":
            return get_forecaster(name)
        if ckpt.exists():
            return MIMNetForecaster(str(ckpt), device=device, bf16=args.bf16, refine=args.refine)
        untrained = MIMNet(load_run_config().model).eval()
        return MIMNetForecaster.from_model(untrained, device=device, bf16=args.bf16,
                                           refine=args.refine)  # fmt: skip

    n_inputs = max(method(m, "cpu").input_frames for m in args.methods)
    peaks = print_peaks(devices, args.bf16)
    for size in args.sizes:
        latency: dict[str, float] = {}
        cube = synthetic_cube(SyntheticConfig(height=size, width=size, seed=1,
                                              frames=n_inputs))  # fmt: skip
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
                    "device_name": device_label(device),
                    "threads": torch.get_num_threads(),
                    "bf16": args.bf16 and bf16_native(device),  # autocast's own rule
                    "method": name,
                    "model": fc.describe() if name == "mimnet" else fc.description,
                    "leads": int(forecast.sizes["time"]),
                    "tiled": name == "mimnet" and (size * fc.grid_refine) ** 2 > fc.max_pixels,
                    "latency_s": round(min(times[1:]), 3),
                    "first_run_s": round(times[0], 3),
                    "netcdf_mb": round(path.stat().st_size / 2**20, 2),
                    "peak_rss_mb": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                }  # fmt: skip
                if name == "mimnet":
                    inputs = open_cube(store).reflectivity.values[-fc.input_frames :]
                    seconds, gflop = model_work(fc, inputs, device)
                    best = peaks[device]
                    row.update({"network_s": round(seconds, 3), "gflop": round(gflop, 1),
                                "gflops_per_s": round(gflop / seconds, 1),
                                "fraction_of_peak": round(gflop / seconds / best, 3)})  # fmt: skip
                latency[f"{name}@{device}"] = row["latency_s"]
                print(json.dumps(row), flush=True)
            for device in devices:
                if f"mimnet@{device}" in latency and f"extrapolation@{devices[0]}" in latency:
                    ratio = latency[f"mimnet@{device}"] / latency[f"extrapolation@{devices[0]}"]
                    print(json.dumps({"grid": [size, size], "ratio": "mimnet/extrapolation",
                                      "device": device, "value": round(ratio, 2)}),
                          flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
