"""The ``tweakline`` command's entry point: for ``run``, the fork server starts before the CLI's imports.

Everything else is :func:`tweakline.cli.main.main`; this module imports only the standard library
and :mod:`tweakline.stack.early` before handing over (see there for why).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        from tweakline.stack.early import launch

        launch()
    from tweakline.cli.main import main as cli_main

    cli_main()
