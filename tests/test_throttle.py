"""The password throttle: the hub must never drive an XNAT account into XNAT's lockout."""

from xnat_oauth.throttle import Limit, LoginThrottle


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(user=3, addr=10, window=60.0):
    clock = Clock()
    return LoginThrottle(Limit(user, window), Limit(addr, window), clock=clock), clock


def test_user_limit_blocks_after_failures_and_reopens_after_window():
    t, clock = make(user=3)
    for _ in range(3):
        t.begin("alice", "192.0.2.1").failed()
    assert t.begin("alice", "192.0.2.2") is None, "a fourth guess from anywhere must not reach XNAT"
    assert 0 < t.retry_after("alice", "192.0.2.2") <= 60
    clock.t += 61
    assert t.begin("alice", "192.0.2.2") is not None


def test_usernames_are_throttled_case_insensitively_like_xnat_login():
    t, _ = make(user=2)
    t.begin("Alice", "a").failed()
    t.begin("ALICE", "a").failed()
    assert t.begin("alice", "a") is None


def test_address_limit_across_usernames():
    t, _ = make(user=100, addr=4)
    for i in range(4):
        t.begin(f"user{i}", "198.51.100.9").failed()
    assert t.begin("someone-else", "198.51.100.9") is None
    assert t.begin("someone-else", "198.51.100.8") is not None


def test_in_flight_attempts_count_so_concurrent_guesses_cannot_overshoot():
    t, _ = make(user=3)
    attempts = [t.begin("bob", "a") for _ in range(10)]
    assert sum(a is not None for a in attempts) == 3


def test_success_forgives_the_users_failures_and_outage_counts_nothing():
    t, _ = make(user=2)
    t.begin("carol", "a").failed()
    t.begin("carol", "a").succeeded()
    t.begin("carol", "a").failed()
    assert t.begin("carol", "a") is not None
    t2, _ = make(user=1)
    t2.begin("dave", "a").inconclusive()
    assert t2.begin("dave", "a") is not None


def test_memory_is_bounded_by_active_failures():
    t, clock = make(user=1, addr=1000)
    for i in range(500):
        t.begin(f"scan{i}", f"2001:db8::{i:x}").inconclusive()
    assert len(t._users) == 0 and len(t._addrs) == 0
