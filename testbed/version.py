"""Which code made a result: the package version and, in a git checkout, its commit (with "+changes" when the
working tree differs from it). A comparison resumed by other code says so (compare/runner.py)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from testbed import __version__


@functools.cache
def code_version() -> str:
    """"0.1.0 (git 540542f)", "0.1.0 (git 540542f+changes)", or "0.1.0" outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # installed elsewhere: a git repository around it is not this code's
        return __version__
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed wheel)
        return __version__
    return f"{__version__} (git {commit}{'+changes' if changed else ''})"
