"""The Z-R relation: reflectivity <-> rain rate, Z = a R^b (Z in mm^6 m^-3, R in mm/h).

The one home of the relation and of its Marshall-Palmer default (a = 200, b = 1.6): readers
(rain rates and accumulations to dBZ), products (dBZ to rain rate), verification (rain-rate
thresholds) and training (the balanced loss's rain classes) all import it from here.
``NO_ECHO_DBZ`` (measured, no echo) is rain rate 0; NaN (no data) stays NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: dBZ of "measured, no echo" (ODIM undetect, the lowest 8-bit DBZH code): rain rate 0. The cube
#: contract (:mod:`mimcast.pipeline.cube`) re-exports it.
NO_ECHO_DBZ: float = -32.0


def coarsen_dbz(dbz: np.ndarray, factor: int) -> np.ndarray:
    """Block-average ``(..., H, W)`` dBZ over ``factor`` x ``factor`` pixels in linear Z.

    Trailing rows and columns that fill no whole block are dropped. A block with more than
    half its pixels NaN (no data) becomes NaN; NO_ECHO_DBZ counts as Z = 0.
    """
    *lead, h, w = dbz.shape
    ny, nx = (h // factor) * factor, (w // factor) * factor
    blocks = dbz[..., :ny, :nx].reshape(*lead, ny // factor, factor, nx // factor, factor)
    z = np.where(blocks <= NO_ECHO_DBZ, 0.0, 10.0 ** (blocks / 10.0))
    valid = np.isfinite(z).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(z, axis=(-3, -1)) / np.maximum(valid, 1)
        out = np.where(mean > 0, 10.0 * np.log10(mean), NO_ECHO_DBZ)
    out = np.maximum(out, NO_ECHO_DBZ)
    out[valid * 2 < factor * factor] = np.nan
    return out.astype(np.float32)


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
    dbz = np.full(rate.shape, NO_ECHO_DBZ, dtype=np.float32)
    wet = rate > 0  # the logarithm only where it rains: most of a composite is dry or no data
    with np.errstate(over="ignore"):
        dbz[wet] = np.maximum(10.0 * np.log10(zr.a) + 10.0 * zr.b * np.log10(rate[wet]),
                              NO_ECHO_DBZ)  # fmt: skip
    dbz[np.isnan(rate)] = np.nan
    return dbz


def dbz_to_rate(
    dbz: np.ndarray, zr: ZR = MARSHALL_PALMER, threshold_dbz: float | None = None
) -> np.ndarray:
    """Return rain rate (mm/h) for dBZ; ``NO_ECHO_DBZ`` (and below ``threshold_dbz``) is 0."""
    dbz = np.asarray(dbz, dtype=np.float64)
    # (10^(dBZ/10) / a)^(1/b) as one exponential (a third of the time of the two powers)
    with np.errstate(over="ignore"):
        rate = np.asarray(np.exp(dbz * (np.log(10.0) / (10.0 * zr.b)) - np.log(zr.a) / zr.b))
    floor = NO_ECHO_DBZ if threshold_dbz is None else max(threshold_dbz, NO_ECHO_DBZ)
    rate[dbz <= floor] = 0.0  # NaN compares False: stays NaN
    return rate
