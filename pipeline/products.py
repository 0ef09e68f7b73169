"""Products: reflectivity <-> rain rate through a Z-R relation, and accumulation.

Z = a R^b with Z in mm^6 m^-3 and R in mm/h (Marshall-Palmer a = 200, b = 1.6 by default).
``NO_ECHO_DBZ`` (measured, no echo) is rain rate 0; NaN (no data) stays NaN. Accumulation
from the reference time treats each lead time's rate as the mean over the step ending at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cube import NO_ECHO_DBZ


@dataclass(frozen=True)
class ZR:
    """Z = a R^b with Z in mm^6 m^-3 and R in mm/h."""

    a: float = 200.0  # Marshall-Palmer
    b: float = 1.6  # Marshall-Palmer

    def __post_init__(self) -> None:
        if self.a <= 0 or self.b <= 0:
            raise ValueError(f"Z-R relation a={self.a}, b={self.b}: both must be positive")


MARSHALL_PALMER = ZR()


def rate_to_dbz(rate: np.ndarray, zr: ZR = MARSHALL_PALMER) -> np.ndarray:
    """Return dBZ (float32) for rain rate (mm/h): NaN stays NaN, rate <= 0 is ``NO_ECHO_DBZ``."""
    rate = np.asarray(rate, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dbz = 10.0 * np.log10(zr.a) + 10.0 * zr.b * np.log10(rate)
    dbz = np.where(rate > 0, np.maximum(dbz, NO_ECHO_DBZ), NO_ECHO_DBZ)
    return np.where(np.isnan(rate), np.nan, dbz).astype(np.float32)


def dbz_to_rate(
    dbz: np.ndarray, zr: ZR = MARSHALL_PALMER, threshold_dbz: float | None = None
) -> np.ndarray:
    """Return rain rate (mm/h) for dBZ; ``NO_ECHO_DBZ`` (and below ``threshold_dbz``) is 0."""
    dbz = np.asarray(dbz, dtype=np.float64)
    rate = (10.0 ** (dbz / 10.0) / zr.a) ** (1.0 / zr.b)
    floor = NO_ECHO_DBZ if threshold_dbz is None else max(threshold_dbz, NO_ECHO_DBZ)
    rate = np.where(dbz <= floor, 0.0, rate)
    return np.where(np.isnan(dbz), np.nan, rate)


def accumulate(rate: np.ndarray, step_minutes: float) -> np.ndarray:
    """Return precipitation (mm) accumulated from the reference time, per lead time.

    ``rate`` is ``(lead, y, x)`` in mm/h, each the mean rate over the step ending at that lead
    time; NaN stays NaN from the first lead time where it appears.
    """
    return np.cumsum(np.asarray(rate, dtype=np.float64) * step_minutes / 60.0, axis=0)
