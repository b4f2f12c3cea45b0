"""Run ``tweakline validate|run|submit`` on every hostile file inside one child process with a
memory ceiling (``RLIMIT_AS``), the way the test needs it: ``python -m tests.validation.hostile_child
FOLDER LIMIT_MB`` prints one JSON object per command and file.

The commands run in this process (Typer's runner: the command's own code, imports paid once).
Starting the stack or connecting to a server is replaced by a recorder: a file that gets that
far has not been refused before anything started.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    folder, limit_mb = Path(sys.argv[1]), int(sys.argv[2])
    from typer.testing import CliRunner

    import tweakline.runtime.bus
    import tweakline.stack.local
    from tests.validation.hostile import write_corpus
    from tweakline.cli.main import app

    started: list[str] = []

    def refuse_start(*_a: object, **_k: object) -> None:
        started.append("stack")
        raise SystemExit(99)

    async def refuse_connect(*_a: object, **_k: object) -> None:
        started.append("bus")
        raise SystemExit(99)

    tweakline.stack.local.LocalStack.start = refuse_start  # type: ignore[method-assign]
    tweakline.runtime.bus.connect = refuse_connect  # type: ignore[assignment]
    corpus = write_corpus(folder)
    CliRunner().invoke(app, ["validate", "/dev/null"])  # warm up the lazy imports before the ceiling
    import sklearn.svm  # noqa: F401  (imported by the checks: not part of any file's cost)

    # ru_maxrss would report the parent's peak too (Linux keeps the high-water mark across fork
    # and exec: a long pytest session's), so reset this process's mark and read it from /proc.
    Path("/proc/self/clear_refs").write_text("5")
    limit = limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for command in ("validate", "run", "submit"):
        for name, (path, expect) in corpus.items():
            started.clear()
            args = [command, str(path)] + (["--ephemeral"] if command == "run" else [])
            t0 = time.perf_counter()
            result = CliRunner().invoke(app, args)
            seconds = time.perf_counter() - t0
            exception = None if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
            print(
                json.dumps(
                    {
                        "command": command,
                        "name": name,
                        "expect": expect,
                        "code": result.exit_code,
                        "output": result.output,
                        "exception": exception,
                        "seconds": seconds,
                        "started": list(started),
                    }
                ),
                flush=True,
            )
    peak = _peak_rss_kb() // 1024
    print(json.dumps({"peak_rss_mb": peak}), flush=True)


def _peak_rss_kb() -> int:
    """This process's resident high-water mark (``VmHWM``) since the reset above."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
