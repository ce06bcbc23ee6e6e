"""Requests per API key: a token bucket per key. Pure: the caller passes the (monotonic) time.

Each gateway API process keeps its own buckets (no round trip on the sales hot path). With W
workers × R replicas behind a load balancer a key can reach W × R × the rate; set the rate per
process accordingly (documented in the README's Security section).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int

    def describe(self) -> dict[str, float | int | str]:
        return {"requests_per_second": self.per_second, "burst": self.burst, "per": "api key, per gateway process"}


class KeyRateLimiter:
    """`take(key, now)` spends one token of the key's bucket: 0.0 when the request may go on, else the
    seconds until the bucket holds a token again. A bucket starts full (`burst` tokens) and refills
    at `per_second`."""

    def __init__(self, limit: RateLimit, *, max_keys: int = 100_000) -> None:
        if limit.per_second <= 0 or limit.burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
        self.limit = limit
        self._max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, updated]

    def take(self, key: str, now: float) -> float:
        rate, burst = self.limit.per_second, float(self.limit.burst)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            self._buckets[key] = [burst - 1.0, now]
            return 0.0
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        """A full bucket is the same as no bucket: drop those (bounded memory, whatever the keys)."""
        rate, burst = self.limit.per_second, self.limit.burst
        for key in [k for k, (tokens, updated) in self._buckets.items() if tokens + (now - updated) * rate >= burst]:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # all busy: the oldest go
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]
