"""How an unknown plug-in name is reported: the same words pydantic used for the former enums."""

from __future__ import annotations

from collections.abc import Iterable


def unknown_name(value: object, registered: Iterable[str]) -> str:
    """``Input should be 'a', 'b' or 'c', got 'x'``: the registered names, then the value received."""
    names = [f"'{n}'" for n in registered]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"Input should be {expected}, got {value!r}"
