"""Per-client rate limit (``imagerec serve --rate-limit N``): one token bucket per API key, or per client IP.

Each client gets a bucket of ``burst`` tokens (default ``rate``) that refills at ``rate`` tokens per second; a
request takes one token, and a request that finds the bucket empty is answered 429 ``rate_limited`` with a
``Retry-After`` header (whole seconds until a token is back). Buckets are kept in LRU order and capped at
``max_clients``, so a flood of distinct addresses cannot grow memory without bound (an evicted client simply
starts again with a full bucket).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class RateLimiter:
    """Token buckets keyed by client identity.

    Args:
        rate: tokens (requests) per second per client; must be > 0.
        burst: bucket size (most requests a client can send at once); default ``max(1, rate)``.
        max_clients: most buckets kept (least recently used are dropped beyond it).
        clock: monotonic clock in seconds (tests inject a fake one).

    Example:
        >>> limiter = RateLimiter(5)
        >>> limiter.acquire("key:abc")   # 0.0 = allowed, else seconds to wait
        0.0
    """

    def __init__(
        self, rate: float, burst: float | None = None, max_clients: int = 10_000, clock=time.monotonic
    ):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take one token for ``client``: 0.0 when allowed, else the seconds until a token is available."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """``Retry-After`` value (whole seconds, at least 1) for a wait of ``wait`` seconds."""
        return str(max(1, math.ceil(wait)))
