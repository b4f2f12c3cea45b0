"""Defence in depth on the bus: the scheduler checks every submission again before running it.

A submission may come from a client that did not validate (an older CLI, another allow-list, a
hand-written message). It is checked with the same entry point as ``tweakline validate``; a
refused one is dead-lettered with its reason (visible in ``tweakline status``) and the caller
fails the experiment with the same reason, as it always did for a search algorithm this
installation cannot run.
"""

from __future__ import annotations

import asyncio

from faststream.nats import NatsMessage

from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.service import ServiceContext
from tweakline.validation import problems_of
from tweakline.validation.trust import code_trainer_problems
from tweakline.validation.verdicts import check_cache_of


async def refusal(ctx: ServiceContext, msg: NatsMessage, tweak: TweakFile, repository: str | None = None) -> str | None:
    """Why the submitted ``tweak`` cannot run here (after dead-lettering ``msg`` with it), or ``None``.

    The reason lists every problem as ``<field path>: <message>``, separated by ``; ``.
    """
    # check_spec imports and constructs estimators: off the event loop (unless a recorded pass is reused).
    problems = code_trainer_problems(tweak, ctx.settings.code_trainers, repository)
    problems += await asyncio.to_thread(
        problems_of,
        tweak,
        ctx.settings.allowed_estimators,
        host_paths=ctx.settings.allow_host_paths,
        pools=ctx.settings.pools,
        verdicts=check_cache_of(ctx.settings),  # `tweakline run`'s stack: its CLI's pass of the same spec
    )
    if not problems:
        return None
    reason = "; ".join(str(p) for p in problems)
    await ctx.dead_letter(msg.raw_message.subject, msg.body, f"invalid tweak file: {reason}", dict(msg.headers or {}))
    return reason
