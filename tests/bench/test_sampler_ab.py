"""The sampler A/B's dispatch delay: from a result to the experiment's next request, on the probe's clock."""

from __future__ import annotations

from bench.harness import Probe
from bench.sampler_ab import dispatch_delays


def test_each_request_is_measured_from_the_latest_result_before_it_and_a_batch_once() -> None:
    probe = Probe(nc=None)  # type: ignore[arg-type]  # the timestamps only
    probe.requested = {"rand.0": 0.0, "rand.1": 0.0, "rand.2": 1.5, "rand.3": 1.5, "rand.4": 2.7, "other.0": 1.0}
    probe.completed = {"rand.0": (1.0, b""), "rand.1": (1.2, b""), "rand.2": (2.5, b""), "other.0": (1.4, b"")}
    # The first batch has no earlier result; the batch of 2 and 3 answers rand.1's result at 1.2
    # (one request, counted once); rand.4 answers rand.2's at 2.5. Another experiment's never counts.
    assert [round(d, 6) for d in dispatch_delays(probe, "rand")] == [0.3, 0.2]
