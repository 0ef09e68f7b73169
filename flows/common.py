"""Prefect plumbing shared by the flows: site settings, the Dask task runner.

Paths a run is not given come from the site settings at run time
(:func:`mimcast.pipeline.defaults.site_settings`: ``MIMCAST_*`` variables or the site file),
so scheduled runs, which carry no parameters, use the paths the operator set once.
``MIMCAST_DASK_ADDRESS`` (e.g. ``tcp://scheduler:8786``) sends the fan-out tasks of
``ingest`` and ``evaluate`` to an existing Dask cluster; without it they run on a
``LocalCluster`` that the flow starts and stops.
"""

from __future__ import annotations

import logging
import os

from prefect_dask import DaskTaskRunner

from mimcast.pipeline.defaults import site_settings  # noqa: F401 - re-exported for the flows

# the cluster's own chatter (workers starting and retiring) is not news to an operator
for _name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.core"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def dask_task_runner() -> DaskTaskRunner:
    """A DaskTaskRunner: the configured scheduler address, else a small LocalCluster."""
    address = os.environ.get("MIMCAST_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("MIMCAST_DASK_WORKERS", "2"))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )
