"""Products: reflectivity <-> rain rate through a Z-R relation, and accumulation.

The Z-R relation itself lives in :mod:`pipeline.zr` (re-exported here). Accumulation
from the reference time treats each lead time's rate as the mean over the step ending at it.
"""

from __future__ import annotations

import numpy as np

from mimcast.pipeline.zr import MARSHALL_PALMER, ZR, dbz_to_rate, rate_to_dbz

__all__ = ["MARSHALL_PALMER", "ZR", "accumulate", "dbz_to_rate", "rate_to_dbz"]


def accumulate(rate: np.ndarray, step_minutes: float) -> np.ndarray:
    """Return precipitation (mm) accumulated from the reference time, per lead time.

    ``rate`` is ``(lead, y, x)`` in mm/h, each the mean rate over the step ending at that lead
    time; NaN stays NaN from the first lead time where it appears.
    """
    return np.cumsum(np.asarray(rate, dtype=np.float64) * step_minutes / 60.0, axis=0)
