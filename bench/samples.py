"""What the benchmarks on sample archives share: ``--samples``/``--sets`` and one JSON line each.

A benchmark script builds its parser with :func:`parser`, adds its own options, and hands
:func:`for_each_set` a function of an archive's folder that returns its JSON figures; an
archive missing from ``--samples`` prints a "skipped" line instead.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser(doc: str, sets: list[str]) -> argparse.ArgumentParser:
    """The script's parser (its docstring's first line) with ``--samples`` and ``--sets``."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--samples", type=Path, default=ROOT.parent / "shared" / "radar")
    p.add_argument("--sets", nargs="+", default=sets)
    return p


def for_each_set(args: argparse.Namespace, bench: Callable[[Path], dict]) -> None:
    """Print ``bench(folder)`` as one JSON line per archive of ``args.sets``."""
    for name in args.sets:
        folder = args.samples / name
        if not folder.is_dir():
            print(json.dumps({"archive": name, "skipped": f"{folder} not found"}))
            continue
        print(json.dumps(bench(folder)), flush=True)
