"""The per-key token bucket, with the time passed in."""

import pytest
from pos_gateway.rate_limit import KeyRateLimiter, RateLimit


def test_a_key_gets_its_burst_then_waits_for_the_refill() -> None:
    limiter = KeyRateLimiter(RateLimit(per_second=2.0, burst=3))
    assert [limiter.take("k", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", 100.0) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limiter.take("k", 100.25) == pytest.approx(0.25)
    assert limiter.take("k", 100.5) == 0.0
    assert limiter.take("k", 100.5) > 0


def test_keys_do_not_share_a_bucket_and_a_bucket_never_holds_more_than_the_burst() -> None:
    limiter = KeyRateLimiter(RateLimit(per_second=1.0, burst=2))
    assert limiter.take("a", 0.0) == limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0
    # an hour idle refills to the burst, not to 3,600
    assert [limiter.take("a", 3600.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("a", 3600.0) > 0


def test_memory_stays_bounded_whatever_the_number_of_keys() -> None:
    limiter = KeyRateLimiter(RateLimit(per_second=10.0, burst=5), max_keys=100)
    for n in range(1000):
        limiter.take(f"key-{n}", float(n))
    assert len(limiter._buckets) <= 100
    assert limiter.take("key-999", 999.0) == 0.0  # a recent key keeps its bucket (4 tokens left)


def test_a_limit_without_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyRateLimiter(RateLimit(per_second=0, burst=1))
