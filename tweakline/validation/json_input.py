"""JSON from outside (webhook deliveries, ``/predict`` bodies) parsed within bounds: nesting and numbers.

:func:`parse_json` refuses, before or while decoding, a body nested deeper than ``max_depth`` (a
100,000-deep array would otherwise exhaust the decoder's recursion), integers longer than
``max_int_digits`` (``int()`` of 5,000 digits is slow and a 400-digit one overflows ``float``),
floats that are not finite or are written with more than ``max_float_chars`` characters, and the
``NaN``/``Infinity`` constants Python's decoder accepts but JSON does not. Every refusal is a
:class:`JsonLimitError` with a message for the sender; nothing else escapes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32
MAX_INT_DIGITS = 30
MAX_FLOAT_CHARS = 64

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonLimitError(ValueError):
    """A JSON body that is malformed or breaks a bound; the message says which and where."""


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings ignored), in linear time."""
    structural = _STRING.sub(b"", _ESCAPE.sub(b"", raw)).translate(None, _NOT_BRACKETS)
    if not structural:
        return 0
    steps = np.frombuffer(structural, dtype=np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1), dtype=np.int64).max())


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonLimitError(f"integer of {len(text.lstrip('-'))} digits; expected at most {MAX_INT_DIGITS}")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise JsonLimitError(f"number written with {len(text)} characters; expected at most {MAX_FLOAT_CHARS}")
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError(f"number {text} is out of range (beyond ±1.8e308)")
    return value


def _constant(text: str) -> Any:
    raise JsonLimitError(f"{text} is not a JSON number; expected a finite number")


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode ``raw`` (UTF-8 JSON) within the bounds above.

    Raises:
        JsonLimitError: empty, not UTF-8, not JSON, too deep, or a number out of bounds.
    """
    if not raw.strip():
        raise JsonLimitError("body is empty; expected a JSON document")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonLimitError(f"body is nested {depth} levels deep; expected at most {max_depth}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonLimitError(f"body is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except JsonLimitError:
        raise
    except RecursionError:  # unbalanced brackets can fool the count above; the decoder still stops
        raise JsonLimitError(f"body is nested too deep; expected at most {max_depth} levels") from None
    except ValueError as exc:
        raise JsonLimitError(f"body is not valid JSON: {str(exc)[:200]}") from None
