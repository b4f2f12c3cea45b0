"""``--runners``: how many trial runners the local stack starts, and in which pools.

``--runners 3`` is three runners of the default pool (as before pools existed);
``--runners small=2,large=1`` is two runners of pool ``small`` and one of pool ``large``, and the
stack's platform then has exactly those pools (``TWEAKLINE_POOLS``): a tweak file asking for
another pool is refused at validation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tweakline.errors import ConfigurationError
from tweakline.proto.ids import NAME_PATTERN
from tweakline.proto.subjects import DEFAULT_POOL

EXPECTED = "expected a number of runners (e.g. 3) or pools with their runners (e.g. small=2,large=1)"
MAX_RUNNERS = 256  # per pool: a typo such as 2000 would fork that many Python processes


def parse_runners(text: str | None) -> dict[str, int] | None:
    """Parse a ``--runners`` value into ``{pool: runners}``; ``None`` (not given) stays ``None``.

    Raises:
        ConfigurationError: naming ``--runners``, the offending part and what was expected.
    """
    if text is None:
        return None
    value = text.strip()
    if re.fullmatch(r"\d+", value):
        return {DEFAULT_POOL: _count(value, text)}
    pools: dict[str, int] = {}
    for part in value.split(","):
        pool, sep, count = (s.strip() for s in part.partition("="))
        if not sep:
            raise ConfigurationError(f"--runners: {part.strip()!r:.60} in {text!r:.80} has no '='; {EXPECTED}")
        if not pool:
            raise ConfigurationError(f"--runners: {part.strip()!r:.60} in {text!r:.80} names no pool before '='; {EXPECTED}")
        if not re.fullmatch(NAME_PATTERN, pool):
            raise ConfigurationError(
                f"--runners: pool {pool!r:.60} in {text!r:.80} is not a pool name; "
                "expected lower-case letters, digits and '-' (a Kubernetes-style name)"
            )
        if pool in pools:
            raise ConfigurationError(f"--runners: pool {pool!r:.60} is given twice in {text!r:.80}; expected each pool once")
        pools[pool] = _count(count, text, pool)
    return pools


def _count(count: str, text: str, pool: str | None = None) -> int:
    where = f"the runners of pool {pool!r:.60}" if pool else "the number of runners"
    if not re.fullmatch(r"\d+", count):
        raise ConfigurationError(f"--runners: {where} is {count!r:.60} in {text!r:.80}; expected a whole number from 1")
    number = int(count)
    if not 1 <= number <= MAX_RUNNERS:
        raise ConfigurationError(f"--runners: {where} is {number} in {text!r:.80}; expected 1 to {MAX_RUNNERS}")
    return number


def runner_pools(runners: int | Mapping[str, int] | None, default: int) -> dict[str, int]:
    """``LocalStack(runners=...)`` as ``{pool: runners}``: a count is that many runners of the default pool."""
    if runners is None:
        return {DEFAULT_POOL: default}
    if isinstance(runners, int):
        return {DEFAULT_POOL: runners} if runners > 0 else {}
    return {pool: count for pool, count in runners.items() if count > 0}


def format_runners(pools: Mapping[str, int] | None) -> str:
    """The ``--runners`` text of ``{pool: runners}`` (``0``: not given), to hand it to the supervisor."""
    return ",".join(f"{pool}={count}" for pool, count in pools.items()) if pools else "0"


def runners_callback(value: str | None) -> dict[str, int] | None:
    """Typer callback of ``--runners``: the parsed pools, or a usage error naming the option and the value."""
    import typer

    try:
        return parse_runners(value)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--runners: ")) from None


RUNNERS_HELP = (
    "Trial runners: a number (runners of the default pool; default: number of cores) or pools with "
    "their runners, e.g. small=2,large=1 (the stack then has exactly those pools)."
)
