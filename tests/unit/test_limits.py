"""Token buckets per caller (shared.runtime.limits), on simulated time: `now` is passed,
nothing sleeps."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from shared.runtime import http
from shared.runtime.limits import RateLimiter, digest, enforce

pytestmark = pytest.mark.unit


def test_a_burst_is_allowed_and_the_next_request_is_told_how_long_to_wait() -> None:
    limiter = RateLimiter(rate=2, burst=4)

    assert [limiter.wait("ann", now=0) for _ in range(4)] == [0, 0, 0, 0]
    assert limiter.wait("ann", now=0) == pytest.approx(0.5), "one token at 2 a second"
    assert limiter.wait("ann", now=0.25) == pytest.approx(0.25), "half a token refilled"


def test_a_refused_request_takes_no_token() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    limiter.wait("ann", now=0)

    for _ in range(5):
        assert limiter.wait("ann", now=0.5) == pytest.approx(0.5)
    assert limiter.wait("ann", now=1) == 0


def test_the_bucket_refills_at_the_rate_over_time() -> None:
    limiter = RateLimiter(rate=2, burst=4)
    for _ in range(4):
        limiter.wait("ann", now=10)

    assert limiter.wait("ann", now=10.5) == 0, "one token after half a second"
    assert limiter.wait("ann", now=10.5) > 0
    assert [limiter.wait("ann", now=11.5) for _ in range(3)] == [0, 0, pytest.approx(0.5)]


def test_a_long_pause_refills_no_more_than_the_burst() -> None:
    limiter = RateLimiter(rate=2, burst=4)
    limiter.wait("ann", now=0)

    allowed = [limiter.wait("ann", now=3600) == 0 for _ in range(6)]

    assert allowed == [True] * 4 + [False] * 2


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    for _ in range(2):
        limiter.wait("ann", now=0)

    assert limiter.wait("ann", now=0) > 0
    assert [limiter.wait("bob", now=0) for _ in range(2)] == [0, 0]
    assert limiter.wait("bob", now=0) > 0


def test_beyond_max_keys_the_least_recently_seen_key_is_forgotten() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=2)
    limiter.wait("ann", now=0)
    limiter.wait("bob", now=0)
    assert limiter.wait("ann", now=0) > 0, "ann is refused, and now seen after bob"

    limiter.wait("cat", now=0)  # a third key: bob, seen least recently, is forgotten

    assert limiter.wait("bob", now=0) == 0, "a forgotten key starts with a full bucket"
    assert limiter.wait("cat", now=0) > 0, "cat is still remembered"


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_a_limiter_needs_a_positive_rate_and_a_burst_of_at_least_one(
    rate: float, burst: float
) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        RateLimiter(rate=rate, burst=burst)


def test_enforce_passes_while_every_bucket_has_a_token() -> None:
    per_user, per_address = RateLimiter(1, 2), RateLimiter(1, 2)

    enforce((per_user, "ann"), (per_address, "10.0.0.1"))
    enforce((per_user, "ann"), (per_address, "10.0.0.1"))
    enforce()  # no checks, nothing to refuse


def test_enforce_answers_429_with_the_refusing_buckets_wait_rounded_up_as_retry_after() -> None:
    slow, fast = RateLimiter(rate=0.01, burst=1), RateLimiter(rate=1, burst=1)
    enforce((fast, "10.0.0.1"), (slow, "ann"))

    with pytest.raises(HTTPException) as caught:
        enforce((slow, "ann"), (fast, "10.0.0.1"))

    assert caught.value.status_code == 429
    assert caught.value.headers is not None
    retry_after = caught.value.headers["Retry-After"]
    assert retry_after.isdigit() and 99 <= int(retry_after) <= 100, "1/0.01 s, not 1/1 s"


def test_a_refusal_stops_enforce_before_the_later_checks_make_a_bucket() -> None:
    per_address, per_account = RateLimiter(rate=0.01, burst=1), RateLimiter(rate=1, burst=1)
    enforce((per_address, "10.0.0.1"), (per_account, "ann"))

    for n in range(100):
        with pytest.raises(HTTPException):
            enforce((per_address, "10.0.0.1"), (per_account, f"user-{n}"))

    assert len(per_account) == 1, "only the one admitted request's account has a bucket"


def test_a_refunded_token_can_be_taken_again() -> None:
    limiter = RateLimiter(rate=0.01, burst=2)
    limiter.wait("ann", now=0)
    limiter.wait("ann", now=0)
    assert limiter.wait("ann", now=0) > 0

    limiter.refund("ann", now=0)

    assert limiter.wait("ann", now=0) == 0
    assert limiter.wait("ann", now=0) > 0
    limiter.refund("nobody", now=0)  # nothing taken, nothing to give back
    assert len(limiter) == 1


def test_a_refund_never_fills_a_bucket_beyond_its_burst() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    limiter.wait("ann", now=0)
    for _ in range(5):
        limiter.refund("ann", now=10)

    assert [limiter.wait("ann", now=10) == 0 for _ in range(3)] == [True, True, False]


def test_a_digest_is_16_bytes_whatever_its_input_and_tells_parts_apart() -> None:
    assert len(digest("a" * 65_536)) == len(digest("")) == 16
    assert digest("ann@example.com", "10.0.0.1") != digest("ann@example.com", "10.0.0.2")
    assert digest("ab", "c") != digest("a", "bc")


def test_a_limiter_remembers_at_most_max_keys() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=1000)

    for n in range(20_000):
        limiter.wait(digest(str(n)), now=0)

    assert len(limiter) == 1000


def test_a_limited_route_answers_429_with_retry_after() -> None:
    app = FastAPI()
    http.install(app, max_body_bytes=1024)
    limiter = RateLimiter(rate=0.5, burst=2)

    @app.post("/token")
    def token() -> dict[str, str]:
        enforce((limiter, "ann"))
        return {"ok": "yes"}

    client = TestClient(app)
    answers = [client.post("/token") for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    # whole seconds until the next token: the 2 s one takes, less what the requests took
    assert answers[2].headers["Retry-After"] in {"1", "2"}
    assert answers[2].json() == {"detail": "too many requests: slow down"}
