"""Benchmark MIMNet: train-step throughput, inference latency and peak memory, as JSON.

Usage::

    python bench/model.py                       # CPU, and CUDA when present
    python bench/model.py --device cuda --compile
    python bench/model.py --cases small --precisions fp32 bf16 --repeats 5
    python bench/model.py --cases small --batch 4 --against openstl   # OpenSTL importable

Cases: ``small`` and ``large`` (the issue's configurations) and ``shipped``, the real-radar
recipe's model as ``data/real_cpu.toml`` sets it (its layout under ``--layout auto``) on its
64² training patches, stepped as 5-minute frames.

Each case runs in a fresh process so that peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to that case alone. One JSON object per
line on stdout, then a summary array. Timings are medians over ``--repeats`` after warm-up;
this script never asserts on time.

``--against openstl`` also times OpenSTL's ``MIM_Model`` (github.com/chengtan9907/OpenSTL; it
must be importable, e.g. installed from its repository or on ``PYTHONPATH``) at the same
configuration, in the same process, in alternating rounds: same layers, hidden channels,
filter, patch, frames, batch, optimiser and precision, ``layer_norm=0`` and its usual
(non-reverse) scheduled sampling. The JSON adds its times and our speed-up over it; its peak
memory then covers both models.

On CPU, ``conv_share`` is the share of one profiled step's operator time spent in
convolutions (forward and backward), for each model; ``speedup_ceiling`` is the speed-up over
OpenSTL we would reach if everything but our convolutions took no time: the bound on what
fusing the element-wise work (the norm, the gates) can buy at the same convolutions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    # name: (num_layers, num_hidden, patch_size, height, width, input_length, output_length)
    "small": (4, 64, 4, 64, 64, 10, 10),
    "large": (4, 128, 4, 256, 256, 10, 10),
    "shipped": None,  # the real-radar recipe's model (data/real_cpu.toml) on its 64² patches
}
RECIPE = ROOT / "data" / "real_cpu.toml"


def _case_config(name: str, layout: str, device, norm: bool):
    """Return ``(MIMNetConfig, height, width)`` of a case."""
    import dataclasses

    from mimcast.models.mimnet import MIMNetConfig
    from mimcast.pipeline.training import load_run_config

    channels_last = layout == "channels_last" or (layout == "auto" and device.type == "cuda")
    if CASES[name] is None:
        run = load_run_config(RECIPE)
        if layout == "auto":  # as the recipe trains
            channels_last = run.model.channels_last
        config = dataclasses.replace(run.model, layer_norm=norm, channels_last=channels_last)
        return config, run.data.patch, run.data.patch
    layers, hidden, patch, h, w, t_in, t_out = CASES[name]
    config = MIMNetConfig(
        num_layers=layers, num_hidden=hidden, patch_size=patch, input_length=t_in,
        output_length=t_out, layer_norm=norm, channels_last=channels_last,
    )  # fmt: skip
    return config, h, w


def _conv_share(fn) -> float:
    """Share of one call's operator time (CPU self time) spent in convolutions, forward and
    backward. A step can get at most ``1 / share`` faster without faster convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    # oneDNN, THNN (im2col; fp32 at batch 1) and inductor's fused forms, forward and backward
    conv = sum(e.self_cpu_time_total for e in events if re.search(r"conv(?!ert)", e.key))
    return conv / total if total else float("nan")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_rounds(fns, device, repeats: int) -> list[float]:
    """Median time of each function, timed in alternating rounds (drift hits all alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _openstl_steps(config, batch: int, h: int, w: int, device, use_bf16: bool):
    """Train and inference steps of OpenSTL's MIM at ``config``, as its PredRNN-family method
    calls it: frames cut into patches, channels last, a mask over the predicted frames."""
    import types

    import torch
    from openstl.models import MIM_Model

    from mimcast.models.mimnet import autocast

    p, t_in, t_out = config.patch_size, config.input_length, config.output_length
    configs = types.SimpleNamespace(
        in_shape=(t_in, config.in_channels, h, w), patch_size=p, filter_size=config.filter_size,
        stride=1, layer_norm=0, pre_seq_length=t_in, aft_seq_length=t_out,
        reverse_scheduled_sampling=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MIM_Model(config.num_layers, [config.num_hidden] * config.num_layers, configs)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (h // p, w // p, p * p * config.in_channels)
    x = torch.rand(batch, t_in + t_out, *shape, device=device)
    mask = torch.full((batch, t_out - 1, *shape), 0.5, device=device)

    def fresh():  # its MIM blocks keep the last MIM-S memory between calls, which breaks a
        for block in model.modules():  # change of batch size or of grad mode; the cost of a
            if hasattr(block, "convlstm_c"):  # call is the same from zeros
                block.convlstm_c = None

    def train_step():
        fresh()
        opt.zero_grad(set_to_none=True)
        with autocast(device, enabled=use_bf16):
            pred, _ = model(x, mask, return_loss=False)
            loss = ((pred.float() - x[:, 1:]) ** 2).mean()
        loss.backward()
        opt.step()

    def infer():
        fresh()
        with torch.inference_mode(), autocast(device, enabled=use_bf16):
            model(x[:1], torch.zeros_like(mask[:1]), return_loss=False)
        fresh()

    return train_step, infer, sum(q.numel() for q in model.parameters())


def run_case(name: str, device_name: str, precision: str, batch: int, repeats: int, compile_,
             layout: str = "auto", against: str | None = None, norm: bool = True):  # fmt: skip
    import torch

    from mimcast.models.mimnet import MIMNet, autocast, compile_step, count_parameters

    device = torch.device(device_name)
    config, h, w = _case_config(name, layout, device, norm)
    t_in, t_out = config.input_length, config.output_length
    torch.manual_seed(0)
    model = MIMNet(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        compile_step(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, t_in + t_out, 1, h, w, device=device)
    mask = torch.ones(batch, t_in + t_out - 2, device=device)
    mask[:, t_in - 1 :] = 0.5
    use_bf16 = precision == "bf16"

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, enabled=use_bf16):
            pred = model(x, mask, step_minutes=5.0)  # the step: ignored without step_input
            loss = ((pred.float() - x[:, t_in:]) ** 2).mean()
        loss.backward()
        opt.step()

    def infer():
        with torch.inference_mode(), autocast(device, enabled=use_bf16):
            model(x[:1, :t_in], step_minutes=5.0)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_step()  # warm-up (and compilation)
    infer()
    train_fns, infer_fns, other = [train_step], [infer], None
    if against == "openstl":
        try:
            o_train, o_infer, o_params = _openstl_steps(config, batch, h, w, device, use_bf16)
        except ImportError as err:
            other = {"skipped": f"OpenSTL is not importable ({err})"}
        else:
            o_train()  # warm-up
            o_infer()
            train_fns.append(o_train)
            infer_fns.append(o_infer)
    train_s, *o_train_s = _timed_rounds(train_fns, device, repeats)
    infer_s, *o_infer_s = _timed_rounds(infer_fns, device, repeats)
    shares = {}
    if device.type == "cpu":  # where the time goes: the ceiling of element-wise savings
        shares = {"train": _conv_share(train_step), "inference": _conv_share(infer)}
    if o_train_s:
        other = {
            "params": o_params,
            "train_step_s": round(o_train_s[0], 4),
            "inference_latency_s": round(o_infer_s[0], 4),
            "train_speedup": round(o_train_s[0] / train_s, 3),
            "inference_speedup": round(o_infer_s[0] / infer_s, 3),
        }
        if shares:
            o_shares = {"train": _conv_share(o_train), "inference": _conv_share(o_infer)}
            other["conv_share"] = {k: round(v, 3) for k, v in o_shares.items()}
            # our speed-up over it if everything but our convolutions took no time at all
            other["speedup_ceiling"] = {
                "train": round(o_train_s[0] / (shares["train"] * train_s), 3),
                "inference": round(o_infer_s[0] / (shares["inference"] * infer_s), 3),
            }
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": name,
        "device": device_name,
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "compiled": compile_,
        "channels_last": config.channels_last,
        "layer_norm": config.layer_norm,
        "layers": config.num_layers,
        "hidden": config.num_hidden,
        "filter": config.filter_size,
        "patch": config.patch_size,
        "grid": [h, w],
        "frames": [t_in, t_out],
        "params": count_parameters(model),
        "batch": batch,
        "train_samples_per_s": round(batch / train_s, 3),
        "train_step_s": round(train_s, 4),
        "inference_latency_s": round(infer_s, 4),
        **({"conv_share": {k: round(v, 3) for k, v in shares.items()}} if shares else {}),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "torch": torch.__version__,
        **({"openstl_mim": other} if against else {}),
    }


def _child(queue, *args):
    try:
        queue.put(run_case(*args))
    except Exception as err:  # report, never hide: the JSON says what failed
        queue.put({"case": args[0], "device": args[1], "precision": args[2], "error": repr(err)})


def main(argv=None) -> int:
    import torch

    from mimcast.models.device import bf16_native

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on CUDA, 1 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")
    parser.add_argument("--layout", choices=["auto", "plain", "channels_last"], default="auto",
                        help="memory layout (auto: channels_last on CUDA)")  # fmt: skip
    parser.add_argument("--norm", choices=["on", "off"], default="on",
                        help="MIMNet's per-pixel gate norm (on as shipped)")  # fmt: skip
    parser.add_argument("--against", choices=["openstl"], default=None,
                        help="also time OpenSTL's MIM at the same configuration")  # fmt: skip
    args = parser.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    ctx = mp.get_context("spawn")
    for device in devices:
        batch = args.batch or (4 if device == "cuda" else 1)
        for case in args.cases:
            for precision in args.precisions:
                if precision == "bf16" and not bf16_native(device):
                    # autocast would run fp32 here (a bf16 conv would be 15-80x slower)
                    result = {"case": case, "device": device, "precision": precision,
                              "skipped": f"no native bf16 kernels on this {device}"}  # fmt: skip
                    print(json.dumps(result), flush=True)
                    results.append(result)
                    continue
                queue = ctx.Queue()
                proc = ctx.Process(
                    target=_child,
                    args=(
                        queue,
                        case,
                        device,
                        precision,
                        batch,
                        args.repeats,
                        args.compile,
                        args.layout,
                        args.against,
                        args.norm == "on",
                    ),
                )
                proc.start()
                result = queue.get()
                proc.join()
                print(json.dumps(result), flush=True)
                results.append(result)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
