"""Entry points the fork-server tests run in forked children (``module:function``)."""

from __future__ import annotations

import os
import sys
import time


def show() -> None:
    """Print what the child was given: its arguments and one variable of its environment."""
    print(f"argv={sys.argv[1:]} marker={os.environ.get('TL_MARKER')} server_only={os.environ.get('TL_SERVER_ONLY')}")


def exit_with() -> None:
    """Exit with the code given as the first argument."""
    raise SystemExit(int(sys.argv[1]))


def sleep() -> None:
    """Run until killed."""
    print("sleeping", flush=True)
    while True:
        time.sleep(1)


def preloaded() -> None:
    """Print whether ``colorsys`` (imported by no one here) came with the fork, preloaded by the server."""
    print(f"colorsys={'colorsys' in sys.modules}")


def first() -> None:
    """Called before the entry (``first``): leaves a mark in the environment the entry sees."""
    os.environ["TL_MARKER"] = f"first-in-{os.getpid()}"
