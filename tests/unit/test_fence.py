"""The fence's arithmetic: when a worker cut off from the database stops claiming, and
when it stops what runs, for the settings the configuration check allows."""

import time

import pytest

from django_jobs.worker.fence import Fence


@pytest.mark.parametrize(
    ("interval", "timeout", "claim_until", "fence_after"),
    [
        (5.0, 30.0, 16.0, 27.0),  # the defaults: 3 s before the rescue can come
        (1.0, 4.0, 2.0, 3.0),  # the tests' timings
        (5.0, 10.0, 7.0, 9.0),  # the tightest ratio the settings allow
        (0.5, 1.0, 0.625, 0.75),  # tiny values: the margin is capped at a quarter
    ],
)
def test_claims_pause_before_the_fence_and_the_fence_comes_before_the_rescue(
    interval, timeout, claim_until, fence_after
):
    fence = Fence(heartbeat_interval=interval, worker_timeout=timeout)
    assert fence.claim_until == pytest.approx(claim_until)
    assert fence.fence_after == pytest.approx(fence_after)
    # A heartbeat on time never pauses claims; the fence always precedes the timeout.
    assert interval < fence.claim_until < fence.fence_after < timeout


def test_the_lease_counts_from_the_last_confirmed_heartbeat_sent():
    fence = Fence(heartbeat_interval=1.0, worker_timeout=4.0)
    sent = time.monotonic() + 100
    fence.renew(sent)
    assert fence.may_claim(sent + 1.9)
    assert not fence.expired(sent + 1.9)
    assert not fence.may_claim(sent + 2.0)
    assert not fence.expired(sent + 2.9)
    assert fence.expired(sent + 3.0)
    # A late confirmation of an older heartbeat never moves the lease back.
    fence.renew(sent - 1)
    assert fence.renewed_at == sent
