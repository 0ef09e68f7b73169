"""Where dask work runs, and how its progress shows: one place for ingest and hindcasts.

:func:`dask_scheduler` turns a scheduler name into what ``dask.compute`` takes: a local one
(``threads``, ``processes``, ``synchronous``) or the address of a running distributed
scheduler (``tcp://host:8786``), for which a ``distributed.Client`` is opened for the block
and made the default, so that every dask computation inside it (``to_zarr`` included) runs
on the cluster. Without a name, ``MIMCAST_DASK_ADDRESS`` (the flows' setting) is used, else
local threads. :class:`TaskBar` shows a tqdm bar over dask tasks, the one progress style of
the command line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOCAL = ("threads", "processes", "synchronous")
log = logging.getLogger(__name__)


def check_scheduler(name: str | None) -> str | None:
    """Return ``name`` if it names a scheduler, else raise ``ValueError`` saying what does."""
    if name is None or name in LOCAL or name.startswith(("tcp://", "tls://", "inproc://")):
        return name
    raise ValueError(f"scheduler {name!r}: use {', '.join(LOCAL)} or tcp://HOST:PORT")


@contextmanager
def dask_scheduler(name: str | None = None) -> Iterator[Any]:
    """Yield the ``scheduler=`` argument for ``dask.compute`` (see the module docstring)."""
    import dask

    name = check_scheduler(name or os.environ.get("MIMCAST_DASK_ADDRESS") or "threads")
    if "://" in name:
        from distributed import Client

        with Client(name, set_as_default=True) as client:
            yield client
    else:
        with dask.config.set(scheduler=name):
            yield name


def available_memory() -> int | None:
    """Bytes this process can still use: the kernel's ``MemAvailable``, capped by a cgroup
    (v2) memory limit where one is set (containers, CI); None where neither is known."""
    from pathlib import Path

    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = left if room is None else min(room, left)
    except (OSError, ValueError):
        pass
    return room


def local_workers(
    task_bytes: float, what: str = "task", cpus: int | None = None, available: int | None = None
) -> int:
    """How many tasks of about ``task_bytes`` each a local scheduler should run at once: one
    per core, but no more than fit in half the available memory (at least one). A machine
    with many cores and one large grid per task would otherwise start a task per core and
    run out of memory. ``cpus``/``available`` default to this machine's."""
    cpus = cpus or os.cpu_count() or 1
    available = available_memory() if available is None else available
    if available is None or task_bytes <= 0:
        return cpus
    fit = max(1, int(0.5 * available // task_bytes))
    if fit < cpus:
        log.info("%d %s%s at a time (not %d, one per core): each needs about %.1f GB, "
                 "%.1f GB are available", fit, what, "" if fit == 1 else "s", cpus,
                 task_bytes / 1e9, available / 1e9)  # fmt: skip
    return min(cpus, fit)


class TaskBar:
    """A tqdm bar over the tasks of local dask computations (a no-op on a cluster)."""

    def __init__(self, desc: str, enabled: bool = True, unit: str = "task") -> None:
        self.desc, self.enabled, self.unit = desc, enabled, unit
        self._callback = None

    def __enter__(self) -> TaskBar:
        if not self.enabled:
            return self
        from dask.callbacks import Callback
        from tqdm import tqdm

        bar_ref: dict[str, Any] = {}
        desc, unit = self.desc, self.unit

        class _Callback(Callback):
            def _start_state(self, dsk, state):
                total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
                if "bar" not in bar_ref:
                    bar_ref["bar"] = tqdm(total=0, desc=desc, unit=unit)
                bar_ref["bar"].total += total
                bar_ref["bar"].refresh()

            def _posttask(self, key, result, dsk, state, worker_id):
                bar_ref["bar"].update(1)

        self._bar = bar_ref
        self._callback = _Callback()
        self._callback.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._callback is not None:
            self._callback.__exit__(*exc)
            if "bar" in self._bar:
                self._bar["bar"].close()
