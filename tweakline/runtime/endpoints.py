"""Where a local model server announces itself, so the deployer can find the live endpoint.

A local ``tweakline serve RELEASE`` writes ``<state_dir>/run/serve/<release>.json`` (its URL and
pid) while it runs; the deployer reads it for the post-deploy check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def registration_path(state_dir: Path, release: str) -> Path:
    """Where a local ``tweakline serve RELEASE`` writes its URL."""
    return state_dir / "run" / "serve" / f"{release}.json"


def registered_endpoint(state_dir: Path, release: str) -> str | None:
    """URL of the local model server of ``release``, if one is running."""
    path = registration_path(state_dir, release)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)  # still alive? (a crashed server leaves its file behind)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info["url"])
