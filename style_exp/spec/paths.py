"""Where this user's caches live: one rule for the weights, XLA's compiled programs and the
resident worker's socket. Imports only the standard library, so ``run.py`` can find the
worker before it loads anything else."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$STYLE_EXP_CACHE`` or ``~/.cache/style_exp``."""
    return Path(os.environ.get("STYLE_EXP_CACHE", Path.home() / ".cache" / "style_exp"))
