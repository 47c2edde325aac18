"""Atomic publication of a finished output directory (export, index build, Triton repo).

Everything is written into a temporary sibling directory first; only a complete result is
renamed into place, so a failed or interrupted run never leaves a directory that looks valid.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ragrt.errors import InputError


def publish_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` needs ``overwrite`` and is
    moved aside before the rename and removed after it (never deleted before ``tmp`` is in place)."""
    old = None
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} already exists; pass --overwrite to replace it")
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
