"""Headless Chromium (Debian's ``chromium`` package) for checking HTML reports the way a reader sees them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` headless (scripts run for up to 10 s of virtual time); console lines go to stderr."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def console_messages(stderr: str) -> list[str]:
    """Every message the page wrote to its console (errors, uncaught exceptions, logs)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def drawn_plots(dom: str) -> set[str]:
    """Ids of the plot divs plotly.js actually rendered (it adds ``js-plotly-plot`` and SVG layers)."""
    return set(re.findall(r'<div id="(plot-\d+)" class="plotly-graph-div[^"]*js-plotly-plot', dom))
