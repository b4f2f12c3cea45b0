"""Artefacts generated from the contracts, committed next to what reads them.

Run ``python -m tweakline.proto.generate`` from the repository root after changing a contract;
``--check`` exits non-zero when a committed artefact differs from a fresh generation (CI runs
the same comparison as a test). One function per artefact, each writing one file under ``root``:

- :func:`write_nats_authorization`: ``helm/tweakline/files/nats-authorization.json``, the NATS
  ``authorization`` block of :func:`tweakline.proto.permissions.permission_map`, which the Helm
  chart mounts into the NATS server and includes next to ``tls { verify_and_map: true }``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tweakline.proto.permissions import Identity, Permissions, permission_map

NATS_AUTHORIZATION = Path("helm/tweakline/files/nats-authorization.json")


def nats_user(identity: str) -> str:
    """The NATS user ``verify_and_map`` maps a certificate to: its subject, ``CN=<identity>``.

    Must equal ``tweakline.natsserver.user_for`` (the local stack's server); a test checks it.
    """
    return f"CN={identity}"


def nats_authorization(perms: dict[Identity, Permissions] | None = None) -> dict[str, Any]:
    """The NATS ``authorization`` block as a JSON document (NATS config syntax accepts JSON)."""
    perms = perms if perms is not None else permission_map()
    return {
        "authorization": {
            "users": [
                {
                    "user": nats_user(identity.value),
                    "permissions": {
                        "publish": {"allow": list(p.publish)},
                        "subscribe": {"allow": list(p.subscribe)},
                    },
                }
                for identity, p in perms.items()
            ]
        }
    }


def render_nats_authorization() -> str:
    """The text of ``nats-authorization.json``: stable key order, one trailing newline."""
    return json.dumps(nats_authorization(), indent=2) + "\n"


def write_nats_authorization(root: Path) -> Path:
    """Write the chart's NATS authorisation map under ``root``; return its path."""
    return _write(root / NATS_AUTHORIZATION, render_nats_authorization())


# artefact path (relative to the repository root) -> (renderer, writer)
ARTEFACTS: dict[Path, tuple[Callable[[], str], Callable[[Path], Path]]] = {
    NATS_AUTHORIZATION: (render_nats_authorization, write_nats_authorization),
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stale_artefacts(root: Path) -> list[Path]:
    """Artefacts under ``root`` that are missing or differ from a fresh generation."""
    stale = []
    for relative, (render, _write_fn) in ARTEFACTS.items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            stale.append(relative)
    return stale


def default_root() -> Path:
    """The source checkout this module lives in (``proto/`` sits at the repository root), else the cwd."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "helm").is_dir() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    """Write every artefact (or, with ``--check``, report the stale ones and exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m tweakline.proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an artefact is stale")
    args = parser.parse_args(argv)
    root: Path = args.root if args.root is not None else default_root()
    if args.check:
        stale = stale_artefacts(root)
        for relative in stale:
            print(f"stale: {relative} (run python -m tweakline.proto.generate)", file=sys.stderr)
        return 1 if stale else 0
    for _render, write in ARTEFACTS.values():
        print(write(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
