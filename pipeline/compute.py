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

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOCAL = ("threads", "processes", "synchronous")


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
