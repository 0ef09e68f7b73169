"""Benchmark ingest: frames/s and peak RSS against the floor: one decode + one Zarr write.

Usage::

    python bench/ingest.py                               # RMI and OPERA CIRRUS samples
    python bench/ingest.py --samples ../shared/radar --sets odim/rmi-20210704

For each archive, two runs in fresh processes: ``floor`` decodes every file once with the
reader and writes it into a compressed Zarr array with the cube's chunks (the least any
ingest must do) and ``ingest`` runs :func:`pipeline.ingest.ingest` into a temporary Zarr store. One
JSON object per line; never an assertion on time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = ["odim/rmi-20210704", "odim/opera-cirrus-20241126"]


def _floor(folder: Path) -> dict:
    """Decode every file once (mimcast's reader: the same dBZ the cube holds) and write it,
    compressed, into a Zarr array in whole chunks: the least an ingest must do (same chunks
    and compressor as the cube; no scan, checks, hashes or time axis)."""
    import numpy as np
    import zarr

    from mimcast.pipeline.readers import read

    files = sorted(p for p in folder.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        array, block = None, []
        for i, path in enumerate(files):
            block.append(read(path).reflectivity.values[0])  # the same decode as ingest
            if array is None:
                array = zarr.create_array(
                    Path(tmp) / "floor.zarr", shape=(len(files), *block[0].shape),
                    dtype="float32", chunks=(4, 512, 512), zarr_format=2, fill_value=np.nan,
                )  # fmt: skip
            if len(block) == 4 or i == len(files) - 1:  # whole time chunks, each written once
                array[i + 1 - len(block) : i + 1] = np.stack(block)
                block = []
        seconds = time.perf_counter() - start
    return {"frames": len(files), "seconds": seconds}


def _ingest(folder: Path) -> dict:
    from mimcast.pipeline.ingest import ingest

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = ingest([folder], Path(tmp) / "bench.zarr")
        seconds = time.perf_counter() - start
    return {"frames": report.new_frames, "seconds": seconds, "status": report.status}


def child(mode: str, folder: str) -> None:
    """Run one measurement and print its JSON (called in a fresh process)."""
    result = (_floor if mode == "floor" else _ingest)(Path(folder))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(ROOT.parent / "shared" / "radar"))
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    results = []
    for name in args.sets:
        folder = Path(args.samples) / name
        if not folder.is_dir():
            print(json.dumps({"set": name, "error": f"{folder} not found"}))
            continue
        row = {"set": name, "cpus": os.cpu_count()}
        for mode in ("floor", "ingest"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(folder)],
                capture_output=True, text=True, cwd=ROOT, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                row[mode] = {"error": out.stderr.strip().splitlines()[-1:]}
                continue
            m = json.loads(out.stdout.strip().splitlines()[-1])
            m["frames_per_s"] = round(m["frames"] / m["seconds"], 2) if m["seconds"] else None
            m["seconds"] = round(m["seconds"], 2)
            row[mode] = m
        if "frames_per_s" in row.get("floor", {}) and "frames_per_s" in row.get("ingest", {}):
            row["ingest_vs_floor"] = round(
                row["ingest"]["frames_per_s"] / row["floor"]["frames_per_s"], 3
            )
        print(json.dumps(row), flush=True)
        results.append(row)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
