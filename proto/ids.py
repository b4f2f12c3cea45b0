"""Identifiers that travel on the bus: experiment ids, trial ids and release names.

An id ends up as a NATS subject token (``tweakline.trials.requested.<experiment_id>``) and as a
JetStream KV key (``$KV.tweakline-experiments.<experiment_id>``). An unchecked one can take a
connection down: nats-server closes a connection whose protocol line passes 4 KiB ("maximum
control line exceeded"), a space splits a ``PUB`` line, and nats-py refuses ``"a b"`` or ``""``
as a key on every attempt. So every id is one bounded token of a safe charset — letters, digits,
``-`` and ``_``, never ``.``, ``*``, ``>`` or white space — checked where it is made (the
client, the webhook) and again where it is received (the message models below, and
:func:`tweakline.proto.subjects.subject_for` before any subject is built).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

# A Kubernetes-style name: tweak-file ``metadata.name``, release names, namespaces.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$"
NAME_MAX_LENGTH = 53

# One subject token and one KV key: what generated ids (``<name>-<8 hex>``) and hand-made ones
# (``bench-digits-12345678``) look like, bounded well below nats-server's 4 KiB control line.
EXPERIMENT_ID_MAX_LENGTH = 100
EXPERIMENT_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{EXPERIMENT_ID_MAX_LENGTH - 1}}}$"
# ``<experiment_id>.<number>`` as the platform makes it: a KV key and a message-id part, never a
# subject token, so ``.`` is allowed inside (not at either end).
TRIAL_ID_MAX_LENGTH = EXPERIMENT_ID_MAX_LENGTH + 10
TRIAL_ID_PATTERN = rf"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{{0,{TRIAL_ID_MAX_LENGTH - 2}}}[A-Za-z0-9_-])?$"

ExperimentId = Annotated[str, StringConstraints(pattern=EXPERIMENT_ID_PATTERN, max_length=EXPERIMENT_ID_MAX_LENGTH)]
"""An experiment id: 1-100 letters, digits, ``-`` or ``_``, starting with a letter or digit."""

TrialId = Annotated[str, StringConstraints(pattern=TRIAL_ID_PATTERN, max_length=TRIAL_ID_MAX_LENGTH)]
"""A trial id (``<experiment_id>.<number>``): 1-110 letters, digits, ``-``, ``_`` or inner ``.``."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
"""A Kubernetes-style name (lower-case letters, digits and '-', at most 53): experiment and release names."""

_EXPERIMENT_ID = re.compile(EXPERIMENT_ID_PATTERN)


class InvalidIdentifierError(ValueError):
    """An id that cannot be a subject token or KV key (a ``ValueError``: proto imports no error root)."""


def check_experiment_id(value: str) -> str:
    """``value`` if it is a valid experiment id; otherwise :class:`InvalidIdentifierError` saying why."""
    if not isinstance(value, str) or not _EXPERIMENT_ID.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)"
        raise InvalidIdentifierError(
            f"experiment id {shown!r} is not valid: expected 1-{EXPERIMENT_ID_MAX_LENGTH} letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return value
