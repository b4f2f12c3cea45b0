"""The local stack's web console: its login tokens and its port.

``tweakline up`` (and ``tweakline console`` on a local state directory) start the console with
tokens kept in ``<state>/console/credentials.json`` (mode 0600, made once), unless
``TWEAKLINE_CONSOLE_READ_TOKEN``/``TWEAKLINE_CONSOLE_OPERATOR_TOKEN`` are set. The tokens are
never printed: the commands say where the file is.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path

TOKEN_VARIABLES = ("TWEAKLINE_CONSOLE_READ_TOKEN", "TWEAKLINE_CONSOLE_OPERATOR_TOKEN")
DEFAULT_PORT = 8090


def credentials_path(root: Path) -> Path:
    """Where the local console's tokens are kept."""
    return root / "console" / "credentials.json"


def console_credentials(root: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The token variables for a local console: the environment's, else the state directory's (made once)."""
    if any(environ.get(name) for name in TOKEN_VARIABLES):
        return {name: environ[name] for name in TOKEN_VARIABLES if environ.get(name)}
    path = credentials_path(root)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tokens = {"read_token": secrets.token_urlsafe(24), "operator_token": secrets.token_urlsafe(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(tokens, handle)
    tokens = json.loads(path.read_text())
    return {"TWEAKLINE_CONSOLE_READ_TOKEN": tokens["read_token"], "TWEAKLINE_CONSOLE_OPERATOR_TOKEN": tokens["operator_token"]}


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if it is free on ``host`` (and not 0), else a free port the system chooses."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port on {host}")
