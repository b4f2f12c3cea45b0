"""The trials work queue's consumers per runner pool, created and upgraded by ``ensure_topology``."""

from __future__ import annotations

from nats.js import api

from tweakline.proto.subjects import Consumer, Stream, Subject, all_of, pool_consumer, pool_filter
from tweakline.runtime.bus import connect, consumer_config, ensure_topology


async def test_a_consumer_per_pool_and_the_shared_one_of_before_pools_is_narrowed(nats) -> None:
    settings = nats.settings(pools=["default", "large"])
    nc = await connect(settings, "pool-topology-test")
    try:
        js = nc.jetstream()
        # A platform upgraded from before pools: its one runner consumer took every trial subject,
        # and on a work queue no other consumer may overlap it.
        old = consumer_config(Consumer.TRIAL_RUNNERS, settings)
        old.filter_subject = all_of(Subject.TRIAL_REQUESTED)
        await js.add_consumer(Stream.TRIALS.value, old)
        await ensure_topology(js, settings)
        default = await js.consumer_info(Stream.TRIALS.value, pool_consumer("default"))
        large = await js.consumer_info(Stream.TRIALS.value, pool_consumer("large"))
        assert default.config.filter_subject == pool_filter("default")
        assert large.config.filter_subject == pool_filter("large")
        assert large.config.ack_policy == api.AckPolicy.EXPLICIT and large.config.max_deliver == -1
    finally:
        await nc.close()
