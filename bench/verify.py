"""Benchmark scoring: the time to score forecasts against their observation, as JSON.

Usage::

    python bench/verify.py                         # RMI 700², and OPERA CIRRUS 4400×3800
    python bench/verify.py --samples ../shared/radar --sets odim/rmi-20210704 --methods 3

For each archive, its first frames are read with mimcast's reader; each "method" forecasts
one of the earlier frames (different fields, real echo) for each of ``--leads`` later
observations on the same pixels, as ``mimcast evaluate`` scores them (every score of
:class:`pipeline.verify.Scores`: categorical tables at 7 thresholds, MSE/MAE, FSS at 4
scales, SSIM). Prints one JSON object per archive: seconds per reference time and per
forecast field, and megapixels per second. Never asserts on time.
"""

from __future__ import annotations

import time
from pathlib import Path

import samples  # bench/samples.py: beside this script, first on the path

DEFAULT_SETS = ["odim/rmi-20210704", "odim/opera-cirrus-20241126"]


def bench(folder: Path, methods: int, leads: int, repeats: int) -> dict:
    import numpy as np

    from mimcast.pipeline.readers import read
    from mimcast.pipeline.verify import Scores, VerifyOptions

    files = sorted(p for p in folder.iterdir() if p.is_file())[: methods + leads]
    frames = np.stack([read(p).reflectivity.values[0] for p in files])
    forecasts, observed = frames[:methods], frames[methods:]
    known = np.isfinite(frames).all(axis=0)
    fields = {f"m{i}": np.where(known, fc, np.nan) for i, fc in enumerate(forecasts)}
    Scores(VerifyOptions()).add_lead(5, fields, observed[0])  # imports, warm caches
    times = []
    for _ in range(repeats):
        scores = Scores(VerifyOptions())
        start = time.perf_counter()
        for k in range(leads):
            scores.add_lead(5 * (k + 1), fields, observed[k])
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    pixels = frames[0].size
    return {
        "archive": folder.name, "grid": list(frames.shape[1:]), "methods": methods,
        "leads": leads, "seconds_per_reference_time": round(seconds, 3),
        "seconds_per_field": round(seconds / (methods * leads), 4),
        "megapixels_per_second": round(pixels * methods * leads / seconds / 1e6, 2),
    }  # fmt: skip


def main() -> None:
    parser = samples.parser(__doc__, DEFAULT_SETS)
    parser.add_argument("--methods", type=int, default=3, help="forecasts per lead (default 3)")
    parser.add_argument("--leads", type=int, default=3, help="lead times (default 3)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    samples.for_each_set(args, lambda folder: bench(folder, args.methods, args.leads, args.repeats))


if __name__ == "__main__":
    main()
