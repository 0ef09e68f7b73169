"""Default locations: everything under ``data/local/`` of the checkout (git-ignored)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "data" / "local"
DEFAULT_INCOMING = str(LOCAL / "incoming")
DEFAULT_CUBE = str(LOCAL / "cube.zarr")
DEFAULT_NOWCASTS = str(LOCAL / "nowcasts")
DEFAULT_RUNS = str(LOCAL / "runs" / "latest")
DEFAULT_EVALUATION = str(LOCAL / "evaluation")
