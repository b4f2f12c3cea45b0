"""`tweakline run`'s overlapped start-up: the stack starts while the file is checked, and a refused
file stops what started before the refusal is raised (nothing is submitted: the caller submits
only after :func:`start_while_checking` returns)."""

from __future__ import annotations

import threading

import pytest

from tweakline.cli.overlap import start_while_checking
from tweakline.errors import InvalidTweakFileError, Problem, StackError

WAIT_S = 30.0


class Recorder:
    """A fake stack: ``start`` and ``stop`` recorded; ``start`` can wait for the check to be running."""

    def __init__(self, *, fail: bool = False):
        self.events: list[str] = []
        self.fail = fail
        self.check_running = threading.Event()
        self.started = threading.Event()

    def start(self) -> None:
        # Returns only once the check is running at the same time: the two overlap.
        assert self.check_running.wait(WAIT_S), "the check did not run while the stack started"
        self.events.append("start")
        self.started.set()
        if self.fail:
            raise StackError("nats-server did not start")

    def stop(self) -> None:
        self.events.append("stop")


def refusing(stack: Recorder):
    def check() -> None:
        stack.check_running.set()
        assert stack.started.wait(WAIT_S) or stack.fail
        raise InvalidTweakFileError("bad.yaml", [Problem("spec.model.estimator", "no such estimator, got 'x'")])

    return check


def passing(stack: Recorder):
    def check() -> None:
        stack.check_running.set()

    return check


def test_a_file_refused_while_the_stack_started_stops_the_stack_and_raises_the_refusal() -> None:
    stack = Recorder()
    with pytest.raises(InvalidTweakFileError, match="no such estimator"):
        start_while_checking(stack.start, stack.stop, refusing(stack))
    assert stack.events == ["start", "stop"]


def test_a_passing_check_leaves_the_stack_running() -> None:
    stack = Recorder()
    start_while_checking(stack.start, stack.stop, passing(stack))
    assert stack.events == ["start"]


def test_a_stack_that_fails_to_start_is_reported_when_the_file_is_good() -> None:
    stack = Recorder(fail=True)
    with pytest.raises(StackError, match="nats-server"):
        start_while_checking(stack.start, stack.stop, passing(stack))


def test_a_refused_file_is_what_the_user_sees_even_when_the_stack_failed_too() -> None:
    stack = Recorder(fail=True)
    with pytest.raises(InvalidTweakFileError):
        start_while_checking(stack.start, stack.stop, refusing(stack))


def test_a_refusal_makes_a_start_under_way_give_up() -> None:
    abandoned = threading.Event()
    events: list[str] = []

    def start() -> None:
        if abandoned.wait(WAIT_S):
            events.append("gave up")
            raise StackError("the start was abandoned")
        events.append("finished")

    def check() -> None:
        raise InvalidTweakFileError("bad.yaml", [Problem("spec.model.estimator", "no such estimator, got 'x'")])

    with pytest.raises(InvalidTweakFileError):
        start_while_checking(start, lambda: events.append("stop"), check, abandon=abandoned.set)
    assert events == ["gave up"]
