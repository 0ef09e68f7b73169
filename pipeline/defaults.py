"""Defaults declared once: the CLI, the flows and the library all read them from here.

Site paths (where the cube, the incoming files and the products live) are set once per
site, for every command and every scheduled run, by :func:`site_settings`: environment
variables ``MIMCAST_CUBE``, ``MIMCAST_INCOMING``, ``MIMCAST_NOWCASTS``,
``MIMCAST_EVALUATION``, ``MIMCAST_RUNS``, ``MIMCAST_CHECKPOINT``, else the ``[paths]`` table
of the site file (``MIMCAST_CONFIG``, default ``~/.config/mimcast/mimcast.toml``), else
``data/local/`` of the checkout (git-ignored). A CLI option or flow parameter given
explicitly wins over all of them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
LOCAL = DATA / "local"

# ---- locations
DEFAULT_INCOMING = str(LOCAL / "incoming")
DEFAULT_CUBE = str(LOCAL / "cube.zarr")
DEFAULT_NOWCASTS = str(LOCAL / "nowcasts")
DEFAULT_RUNS = str(LOCAL / "runs" / "latest")
DEFAULT_EVALUATION = str(LOCAL / "evaluation")
DEFAULT_TRAIN_CONFIG = DATA / "train.toml"

#: The default model for nowcast, evaluate and serve: the Lagrangian MIMNet trained on real
#: radar (see data/MODEL_CARD.md: trained without RMI and DWD YW, and scored on both).
SHIPPED_CHECKPOINT = DATA / "mimnet_real.safetensors"
#: The model of `mimcast demo`, trained on the synthetic storms the demo makes.
SYNTHETIC_CHECKPOINT = DATA / "mimnet_synthetic.safetensors"

# ---- ingest
MAX_GAP_MINUTES = 360  # longer gaps are breaks in the time axis, not NaN frames
INGEST_WAIT_S = 300.0  # how long an ingest waits for another one into the same cube

# ---- nowcast
NOWCAST_METHOD = "mimnet"  # forecast method of `mimcast nowcast` and the nowcast flow
FALLBACK_METHOD = "extrapolation"  # what the nowcast flow uses when the model cannot load
DEFAULT_LEADS = 12  # lead steps of methods without a fixed horizon (baselines)
MAP_LEADS = (15, 30, 60)  # lead times (minutes) drawn as maps
ECHO_THRESHOLD_DBZ = 5.0  # weaker predicted reflectivity is "no echo"
RAIN_THRESHOLD_DBZ = 10.0  # weaker reflectivity gives no rain in the products
#: Methods see frames at least this many minutes apart. MIMNet runs on every k-th frame of
#: archives with shorter steps (2-minute archives: 4-minute model steps; the leads in between
#: are interpolated), and extrapolation and S-PROG estimate their motion on every k-th frame.
#: Measured on MRMS (data/MODEL_CARD.md): a model trained mostly on 5-15 minute steps lost to
#: persistence at MRMS's 2 minutes and beat it at 4. Lucas-Kanade on frames 2 minutes apart
#: (a median 0.2 px of motion on its 4 km grid) gave over 0.5 px per step on a fifth of the
#: echo, where frames 6 minutes apart gave at most 0.6 (99th percentile); extrapolation along
#: it had 16-36 % more MSE at +8 to +48 min than along the motion of frames 4 minutes apart.
#: On 5- to 10-minute archives longer spans changed little, and not in one direction.
MIN_STEP_MINUTES = 4.0

# ---- models
#: the frames a model can work in (``[data] frame``); also the `mimcast loao` variants
FRAMES = ("lagrangian", "eulerian")
#: MIMNet output post-processing (``--postprocess``, ``[data] postprocess``, a checkpoint's
#: default): "none"; "pm", every lead takes the last observation's value distribution
#: (probability matching, as pysteps does for S-PROG); "pm-wet", every lead keeps its own rain
#: area (>= RAIN_THRESHOLD_DBZ) and only the values inside it take the distribution of the
#: observation's rain; "pm-advected", as "pm-wet", but each lead's rain takes the distribution
#: of the last observation moved to that lead along the motion (extrapolation), on the pixels
#: the forecast covers: rain that has left the grid by then no longer counts, and rain still
#: on it counts wherever it went. Measured in data/MODEL_CARD.md.
POSTPROCESS = ("none", "pm", "pm-wet", "pm-advected")

# ---- motion and scores
MOTION_FRAMES = 3  # input frames for Lucas-Kanade motion
FLOOR_DBZ = 0.0  # reflectivity floor for motion, baselines and scores

# ---- evaluate
EVALUATE_METHODS = ("mimnet", "persistence", "extrapolation")
EVALUATE_EVERY = 6  # every N-th reference time of a hindcast

# ---- serve
SERVE_INTERVAL_MINUTES = 5.0


# ---- site settings


@dataclass(frozen=True)
class SiteSettings:
    """Where one site keeps its data; see the module docstring for the order of sources."""

    cube: str = DEFAULT_CUBE  # the Zarr cube that ingest extends and nowcasts read
    incoming: str = DEFAULT_INCOMING  # folder where new radar files arrive
    nowcasts: str = DEFAULT_NOWCASTS  # nowcast NetCDF and maps
    evaluation: str = DEFAULT_EVALUATION  # hindcast reports
    runs: str = DEFAULT_RUNS  # training run directory
    checkpoint: str | None = None  # model checkpoint (None: the shipped one)


def site_file() -> Path:
    """Return the site settings file: ``MIMCAST_CONFIG``, else ~/.config/mimcast/mimcast.toml."""
    return Path(os.environ.get("MIMCAST_CONFIG") or Path.home() / ".config/mimcast/mimcast.toml")


def site_settings() -> SiteSettings:
    """Return this site's settings (read now: a scheduled run sees the current ones).

    Raises
    ------
    ValueError
        When the site file is not valid TOML or has unknown keys (named, with the known ones).
    """
    values: dict[str, str] = {}
    path = site_file()
    known = [f.name for f in fields(SiteSettings)]
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML: {err}") from err
        table = doc.get("paths", {})
        unknown = sorted(set(doc) - {"paths"}) + sorted(set(table) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: [paths] {known}")
        values.update({k: str(Path(v).expanduser()) for k, v in table.items()})
    for name in known:
        env = os.environ.get(f"MIMCAST_{name.upper()}")
        if env:
            values[name] = str(Path(env).expanduser())
    return SiteSettings(**values)
