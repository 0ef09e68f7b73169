"""Atomic file writes: the one helper every writer in mimcast uses.

A reader sees the old file or the new one, never a partial one; a failed or killed writer
leaves the destination untouched. The temporary file (or directory, for a Zarr store) sits
beside the destination (same file system, so the final ``os.replace`` is atomic) and is named
``.NAME.PID.tmp``; :func:`remove_stale_temporaries` removes those whose writer is gone.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class AtomicWriteError(OSError):
    """Writing failed (disk full, quota, permissions ...); the destination is untouched."""


def temporary_name(path: str | Path) -> Path:
    """Return the temporary path used while writing ``path`` in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    On an error the temporary file is removed and ``path`` is untouched. An ``OSError`` or a
    library's ``RuntimeError`` (netCDF4 reports a full disk as "NetCDF: HDF error") becomes
    an :class:`AtomicWriteError` that names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if isinstance(err, AtomicWriteError):
            raise
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise AtomicWriteError(
            f"{path}: writing failed ({reason}); the previous file, if any, is unchanged "
            "(is the disk full?)"
        ) from err
    finally:
        _remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, payload: Any, *, indent: int | None = 1) -> Path:
    """Write ``payload`` as JSON (indented; ``indent=None``: compact) to ``path`` atomically
    and return the path."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(payload, indent=indent, separators=separators,
                                              default=str))  # fmt: skip


def remove_stale_temporaries(directory: str | Path, name: str = "*") -> list[Path]:
    """Remove temporaries ``.NAME.PID.tmp`` in ``directory`` whose writer process is gone.

    ``name`` is a glob for the destination's name (``"nowcast_*.nc"``, ``"cube.zarr"``).
    Returns what was removed. A temporary of a running process is left alone.
    """
    removed = []
    for tmp in Path(directory).glob(f".{name}.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)  # still running: leave it alone
        except ProcessLookupError:
            _remove(tmp)
            removed.append(tmp)
        except (ValueError, PermissionError):
            continue
    return removed
