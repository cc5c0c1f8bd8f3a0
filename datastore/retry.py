"""Bounded exponential backoff with full jitter, logged at WARNING on every retry."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryPolicy", "call_with_retry"]

log = logging.getLogger("shardyard.retry")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all; the n-th wait is uniform in [0, min(max, base * 2**n)] s."""

    max_attempts: int = 6
    base: float = 0.2
    maximum: float = 10.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (0-based)."""
        cap = min(self.maximum, self.base * (2**attempt))
        return (rng or random).uniform(0, cap)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    on_give_up: Callable[[BaseException, int], BaseException] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying errors ``is_transient`` accepts.

    A non-transient error propagates at once. When the budget is spent, the last error is
    raised, or ``on_give_up(err, attempts)`` if given (to name the endpoint and the fix).
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            attempt += 1
            if attempt >= policy.max_attempts:
                if on_give_up is not None:
                    raise on_give_up(err, attempt) from err
                raise
            wait = policy.delay(attempt - 1)
            log.warning(
                "%s failed (attempt %d/%d: %s); retrying in %.2fs",
                what,
                attempt,
                policy.max_attempts,
                _short(err),
                wait,
            )
            time.sleep(wait)


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"[:200]
