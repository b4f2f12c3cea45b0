"""`tweakline run`'s start-up: the local stack starts while the tweak file's slow checks run.

The checks that import scikit-learn (the estimator's parameters, the dataset, the search
plug-ins) take a second or more, and so does starting nats-server, the topology and the
services. They do not depend on each other, so they overlap: the checks run in a thread while
this thread starts the stack. This thread, because Linux ties a child's ``PR_SET_PDEATHSIG`` to
the thread that started it: a stack started from a thread that ends would be killed with it.

The rule that keeps the overlap invisible for a bad file: nothing is submitted unless the checks
passed (the caller submits only after :func:`start_while_checking` returns), and when they fail
the stack that started meanwhile is stopped before the error is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tweakline.errors import InvalidTweakFileError


def start_while_checking(
    start: Callable[[], object],
    stop: Callable[[], None],
    check: Callable[[], object],
    abandon: Callable[[], None] | None = None,
) -> None:
    """Run ``check`` in a thread while ``start`` runs in this one; return once both are done.

    ``abandon`` is called from the check's thread as soon as the file is refused, so that a
    start still under way can give up at its next step (it then raises) instead of finishing.

    Raises:
        InvalidTweakFileError: ``check`` refused the file; what ``start`` started is stopped first
            (whether it finished or failed: a bad file is the error the user needs to see).
        Exception: what ``start`` raised when the check passed (``start`` cleans up after itself).
    """
    refused: list[BaseException] = []

    def _check() -> None:
        try:
            check()
        except BaseException as exc:  # handed to this thread, which decides what the user sees
            refused.append(exc)
            if abandon is not None and isinstance(exc, InvalidTweakFileError):
                abandon()

    checker = threading.Thread(target=_check, name="tweak-file-check", daemon=True)
    checker.start()
    try:
        start()
    except Exception:  # not an interrupt: that one stops the command without waiting for the check
        checker.join()
        if refused and isinstance(refused[0], InvalidTweakFileError):
            raise refused[0] from None
        raise
    checker.join()
    if refused:
        stop()
        raise refused[0]
