"""Bounded retries with exponential backoff, for calls to a service that may blink (Label Studio).

Pure: the clock and ``sleep`` are parameters, so the schedule is tested without waiting. With the
defaults a call is tried at most 4 times, sleeping 1, 2 and 4 s in between (7 s of sleep), and no new try
starts after 30 s, so an unreachable server is given up on well under a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``tries``: calls in all (1 = no retry). ``first_delay_s``: sleep before the second try; each later sleep
    doubles, capped at ``max_delay_s``. ``deadline_s``: no try starts (and no sleep is begun) that would
    start more than this many seconds after the first.
    """

    tries: int = 4
    first_delay_s: float = 1.0
    max_delay_s: float = 8.0
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError(f"retry tries {self.tries} must be >= 1 (1 means no retry)")
        if self.first_delay_s < 0 or self.max_delay_s < 0 or self.deadline_s < 0:
            raise ValueError(
                f"retry delays ({self.first_delay_s}, {self.max_delay_s}) and deadline {self.deadline_s} must be >= 0 s"
            )

    def delays(self) -> Iterator[float]:
        """The sleeps before tries 2, 3, ... ``tries``, in seconds."""
        for i in range(self.tries - 1):
            yield min(self.first_delay_s * 2.0**i, self.max_delay_s)


class RetriesExhausted(Exception):
    """A retried call failed ``tries`` times over ``seconds``; ``last`` (also the ``__cause__``) is its last error.

    Only a signal between :func:`call_with_retry` and its caller, which turns it into its own package's error.
    """

    def __init__(self, last: Exception, tries: int, seconds: float) -> None:
        super().__init__(f"gave up after {tries} tries over {seconds:.1f} s: {last.__class__.__name__}: {last}")
        self.last, self.tries, self.seconds = last, tries, seconds


def call_with_retry(
    call: Callable[[int], T],
    policy: RetryPolicy,
    errors: tuple[type[Exception], ...],
    is_transient: Callable[[Exception], bool] = lambda exc: True,
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call(attempt)`` (attempt 0, 1, ...) until it returns; transient errors are retried per ``policy``.

    An error that is not one of ``errors``, or for which ``is_transient`` is False, is raised at once. When
    the tries or the deadline run out, :class:`RetriesExhausted` is raised from the last error.
    """
    start = clock()
    delays = policy.delays()
    attempt = 0
    while True:
        try:
            return call(attempt)
        except errors as exc:
            if not is_transient(exc):
                raise
            delay = next(delays, None)
            elapsed = clock() - start
            if delay is None or elapsed + delay > policy.deadline_s:
                raise RetriesExhausted(exc, attempt + 1, elapsed) from exc
            log.warning("%s failed (%s: %s); try %d of %d in %.1f s", what, exc.__class__.__name__, exc,
                        attempt + 2, policy.tries, delay)
            sleep(delay)
            attempt += 1
