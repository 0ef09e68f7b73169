"""Defaults declared once: the CLI, the flows and the library all read them from here.

Paths default to ``data/local/`` of the checkout (git-ignored); every path is also a CLI
option and a flow parameter.
"""

from __future__ import annotations

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
#: radar (see data/MODEL_CARD.md; not for commercial use: RMI data is in its training set).
SHIPPED_CHECKPOINT = DATA / "mimnet_real.safetensors"
#: The model of `mimcast demo`, trained on the synthetic storms the demo makes.
SYNTHETIC_CHECKPOINT = DATA / "mimnet_synthetic.safetensors"

# ---- nowcast
NOWCAST_METHOD = "mimnet"  # forecast method of `mimcast nowcast` and the nowcast flow
FALLBACK_METHOD = "extrapolation"  # what the nowcast flow uses when the model cannot load
DEFAULT_LEADS = 12  # lead steps of methods without a fixed horizon (baselines)
MAP_LEADS = (15, 30, 60)  # lead times (minutes) drawn as maps
ECHO_THRESHOLD_DBZ = 5.0  # weaker predicted reflectivity is "no echo"
RAIN_THRESHOLD_DBZ = 10.0  # weaker reflectivity gives no rain in the products

# ---- motion and scores
MOTION_FRAMES = 3  # input frames for Lucas-Kanade motion
FLOOR_DBZ = 0.0  # reflectivity floor for motion, baselines and scores

# ---- evaluate
EVALUATE_METHODS = ("mimnet", "persistence", "extrapolation")
EVALUATE_EVERY = 6  # every N-th reference time of a hindcast

# ---- serve
SERVE_INTERVAL_MINUTES = 5.0
