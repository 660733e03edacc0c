"""Which configuration file `effectd serve` reads, found with the standard library alone: the start-up
cache (effectd.protocol.startup) keys on its contents before pydantic is imported."""

from __future__ import annotations

import os
from pathlib import Path


def config_path(path: Path | None) -> Path | None:
    """`path`, else $EFFECTD_CONFIG, else ./effectd.toml if it is a file, else None (no file)."""
    if path is not None:
        return path
    if os.environ.get("EFFECTD_CONFIG"):
        return Path(os.environ["EFFECTD_CONFIG"])
    default = Path("effectd.toml")
    return default if default.is_file() else None
