"""RetryPolicy and call_with_retry: bounded tries, doubling sleeps, a deadline, and no retry of lasting errors."""

from __future__ import annotations

import pytest

from adapters.retry import RetriesExhausted, RetryPolicy, call_with_retry


class _Clock:
    """A fake monotonic clock; ``sleep`` advances it and records the sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _failing(times: int, exc: Exception, clock: _Clock | None = None, cost_s: float = 0.0):
    calls: list[int] = []

    def call(attempt: int) -> str:
        calls.append(attempt)
        if clock is not None:
            clock.now += cost_s
        if len(calls) <= times:
            raise exc
        return "ok"

    return call, calls


def test_delays_double_from_the_first_and_are_capped() -> None:
    assert list(RetryPolicy(tries=6, first_delay_s=1.0, max_delay_s=5.0).delays()) == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert list(RetryPolicy(tries=1).delays()) == []


def test_default_policy_gives_up_well_under_a_minute_of_sleep() -> None:
    policy = RetryPolicy()
    assert 2 <= policy.tries <= 5 and sum(policy.delays()) < 15 and policy.deadline_s < 60


def test_transient_failures_are_retried_until_the_call_succeeds() -> None:
    clock = _Clock()
    call, calls = _failing(2, ConnectionError("refused"))
    result = call_with_retry(call, RetryPolicy(tries=4), (ConnectionError,), sleep=clock.sleep, clock=clock)
    assert result == "ok" and calls == [0, 1, 2] and clock.sleeps == [1.0, 2.0]


def test_after_the_last_try_the_last_error_is_raised_with_the_count() -> None:
    clock = _Clock()
    error = ConnectionError("refused")
    call, calls = _failing(10, error)
    with pytest.raises(RetriesExhausted) as info:
        call_with_retry(call, RetryPolicy(tries=3), (ConnectionError,), sleep=clock.sleep, clock=clock)
    assert calls == [0, 1, 2] and clock.sleeps == [1.0, 2.0]
    assert info.value.last is error and info.value.__cause__ is error
    assert info.value.tries == 3 and info.value.seconds == pytest.approx(3.0)
    assert "3 tries" in str(info.value) and "refused" in str(info.value)


def test_no_try_starts_after_the_deadline() -> None:
    clock = _Clock()
    call, calls = _failing(10, TimeoutError("slow"), clock, cost_s=10.0)  # each try hangs 10 s
    with pytest.raises(RetriesExhausted) as info:
        call_with_retry(call, RetryPolicy(tries=10, deadline_s=15.0), (TimeoutError,), sleep=clock.sleep,
                        clock=clock)
    # try 1 runs 0-10 s, try 2 starts at 11 s; a 3rd would start at 23 s, past the 15 s deadline
    assert calls == [0, 1] and info.value.tries == 2 and clock.now == pytest.approx(21.0)


def test_errors_that_will_not_pass_are_raised_at_once() -> None:
    clock = _Clock()
    call, calls = _failing(5, PermissionError("401"))
    with pytest.raises(PermissionError):
        call_with_retry(call, RetryPolicy(), (OSError,), is_transient=lambda e: not isinstance(e, PermissionError),
                        sleep=clock.sleep, clock=clock)
    other, other_calls = _failing(5, KeyError("x"))
    with pytest.raises(KeyError):
        call_with_retry(other, RetryPolicy(), (OSError,), sleep=clock.sleep, clock=clock)
    assert calls == [0] and other_calls == [0] and clock.sleeps == []


@pytest.mark.parametrize("kwargs", [{"tries": 0}, {"first_delay_s": -1.0}, {"deadline_s": -5.0}])
def test_policy_rejects_impossible_values(kwargs) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)
