"""Benchmark the motion estimate every method shares: mimcast's against pysteps', as JSON.

Usage::

    python bench/motion.py                          # RMI 700², and OPERA CIRRUS 4400×3800
    python bench/motion.py --samples ../shared/radar --sets odim/rmi-20210704 --repeats 3

For each archive, its last 3 frames are read with mimcast's reader and prepared as
:func:`pipeline.forecasters.motion_field` prepares them; then pysteps' dense Lucas-Kanade
(``pysteps.motion.get_method("LK")``, sparse vectors interpolated to every pixel on one
core) and :func:`pipeline.forecasters.lucas_kanade` (the same sparse vectors, the same
interpolation in bands of rows on every core) each estimate the motion. Prints one JSON
object per archive: the median seconds of each, of pysteps' sparse part alone, the speed-up,
and whether the two fields are identical bit for bit. Never asserts on time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import samples  # bench/samples.py: beside this script, first on the path

DEFAULT_SETS = ["odim/rmi-20210704", "odim/opera-cirrus-20241126"]


def _median_time(fn, repeats: int):
    import numpy as np

    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def bench(folder: Path, repeats: int) -> dict:
    import numpy as np

    from mimcast.pipeline import forecasters
    from mimcast.pipeline.readers import read

    files = sorted(p for p in folder.iterdir() if p.is_file())[-3:]
    frames = np.concatenate([read(p).reflectivity.values for p in files])
    floor = forecasters.FLOOR_DBZ
    frames = np.nan_to_num(np.maximum(frames, floor), nan=floor).astype(np.float32)
    ps = forecasters.pysteps()
    lk = ps.motion.get_method("LK")
    lk(frames[:, :64, :64], verbose=False)  # imports and OpenCV's first call, outside the clock
    sparse, _ = _median_time(
        lambda: ps.motion.lucaskanade.dense_lucaskanade(frames, dense=False), repeats
    )
    theirs, reference = _median_time(lambda: lk(frames, verbose=False), repeats)
    ours, field = _median_time(lambda: forecasters.lucas_kanade(frames), repeats)
    return {
        "archive": folder.name, "grid": list(frames.shape[1:]), "cores": os.cpu_count(),
        "pysteps_seconds": round(theirs, 3), "mimcast_seconds": round(ours, 3),
        "sparse_vectors_seconds": round(sparse, 3), "speedup": round(theirs / ours, 2),
        "identical": bool(np.array_equal(field, reference)),
    }  # fmt: skip


def main() -> None:
    parser = samples.parser(__doc__, DEFAULT_SETS)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    samples.for_each_set(args, lambda folder: bench(folder, args.repeats))


if __name__ == "__main__":
    main()
