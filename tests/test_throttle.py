"""The password throttle: the hub must never drive an XNAT account into XNAT's lockout.

In-process: an injected clock moves time, SQLite files live in tmp_path. The last tests put the
real password login (``PasswordLogin`` + ``XnatClient``) in front of the XNAT emulator and count
what XNAT's own failed-login counter does.
"""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from xnat_oauth.errors import LoginThrottled, XnatAuthError
from xnat_oauth.password_login import PasswordLogin
from xnat_oauth.throttle import (
    ADDRESS_RATE,
    FULL,
    HARD_STOP,
    STORE_DOWN,
    USER_RATE,
    Limit,
    LoginThrottle,
    ThrottleRefused,
    ThrottleStore,
    describe_wait,
    fold_username,
    hard_stop_for,
)
from xnat_oauth.xnat_client import XnatClient

HOUR = 3600.0


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def make(user=3, addr=10, window=60.0, *, hard_stop=10, path=None, **kw):
    clock = Clock()
    t = LoginThrottle(Limit(user, window), Limit(addr, window), hard_stop=hard_stop, path=path, clock=clock, **kw)
    return t, clock


def refused(t, username, address="192.0.2.1") -> ThrottleRefused:
    with pytest.raises(ThrottleRefused) as ei:
        t.begin(username, address)
    return ei.value


def fail(t, username, address="192.0.2.1", n=1):
    for _ in range(n):
        t.begin(username, address).failed()


# -- the rate limits --------------------------------------------------------------------------------


def test_user_limit_blocks_after_failures_and_reopens_after_window():
    t, clock = make(user=3)
    fail(t, "alice", n=3)
    r = refused(t, "alice", "192.0.2.2")  # from anywhere: the count is the username's
    assert isinstance(r, LoginThrottled) and r.status_code == 429 and r.reason == USER_RATE
    assert 0 < r.retry_after <= 60
    assert "Too many failed login attempts for this username" in r.user_message
    assert "about 60 seconds" in r.user_message
    clock.t += 61
    t.begin("alice", "192.0.2.2").failed()


def test_retry_after_is_when_the_oldest_counted_failure_leaves_the_window():
    t, clock = make(user=2, window=600)
    fail(t, "alice")
    clock.t += 100
    fail(t, "alice")
    assert refused(t, "alice").retry_after == 500
    clock.t += 500
    t.begin("alice", "a").failed()
    assert refused(t, "alice").retry_after == 100


def test_usernames_are_throttled_however_they_are_spelled():
    t, _ = make(user=3)
    fail(t, "Alice")
    fail(t, " ALICE ")
    fail(t, "ａｌｉｃｅ")  # fullwidth letters: NFKC makes them the same name
    assert refused(t, "alice").reason == USER_RATE
    assert fold_username("Straße") == fold_username("STRASSE")  # folding more than XNAT is stricter


def test_address_limit_across_usernames():
    t, clock = make(user=100, addr=4)
    for i in range(4):
        fail(t, f"user{i}", "198.51.100.9")
    r = refused(t, "someone-else", "198.51.100.9")
    assert r.reason == ADDRESS_RATE and "from your network address" in r.user_message
    t.begin("someone-else", "198.51.100.8").failed()
    clock.t += 61
    t.begin("someone-else", "198.51.100.9").failed()


def test_ipv6_clients_share_a_limit_per_64():
    t, _ = make(user=100, addr=2)
    fail(t, "u1", "2001:db8:1:2::a")
    fail(t, "u2", "2001:db8:1:2:ffff::b")
    assert refused(t, "u3", "2001:db8:1:2::c").reason == ADDRESS_RATE
    t.begin("u3", "2001:db8:1:3::c").failed()


def test_in_flight_attempts_count_so_concurrent_guesses_cannot_overshoot():
    t, _ = make(user=3)
    attempts = []
    for _ in range(10):
        try:
            attempts.append(t.begin("bob", "a"))
        except ThrottleRefused as r:
            assert r.reason == USER_RATE and r.retry_after == 5
    assert len(attempts) == 3
    for a in attempts:
        a.failed()
    assert t.state("bob").failures == 3


def test_in_flight_attempts_count_towards_the_hard_stop():
    t, _ = make(user=100, addr=100, hard_stop=4)
    fail(t, "bob", n=2)
    a, b = t.begin("bob", "a"), t.begin("bob", "a")
    assert refused(t, "bob").reason == USER_RATE  # 2 + 2 in flight: would reach 4
    a.failed()
    b.failed()
    assert refused(t, "bob").reason == HARD_STOP


def test_an_attempt_ends_once():
    t, _ = make(user=100)
    a = t.begin("carol", "a")
    a.failed()
    a.failed()
    a.succeeded()
    assert t.state("carol").failures == 1


# -- the hard stop: XNAT's counter never decays, nor does the hub's -------------------------------------


def test_hard_stop_is_xnat_threshold_minus_the_reserve():
    assert hard_stop_for(20, 10) == 10
    assert hard_stop_for(20, 25) == 1
    assert hard_stop_for(5, 0) == 5
    assert hard_stop_for(0, 10) is None  # XNAT never locks: only the rate limits apply


def test_spread_out_guesses_stop_at_the_hard_stop_and_time_does_not_help():
    t, clock = make(user=5, window=HOUR, hard_stop=10, openid_service="AAF", xnat_url="https://xnat.example.org")
    forwarded = 0
    for _ in range(200):
        try:
            a = t.begin("researcher", "203.0.113.5")
        except ThrottleRefused:
            pass
        else:
            forwarded += 1
            a.failed()
        clock.t += HOUR / 3  # three guesses an hour, for days
    assert forwarded == 10
    r = refused(t, "researcher")
    assert r.reason == HARD_STOP and r.retry_after is None
    assert "stopped checking passwords" in r.user_message
    assert "log in with AAF instead" in r.user_message
    assert "log in to XNAT directly at https://xnat.example.org" in r.user_message
    assert "administrator" in r.user_message
    assert "researcher" not in str(r)  # the admin's log line names no username (it may be a password)
    assert t.retry_after("researcher", "a") == float("inf")


def test_success_resets_the_total_and_the_rate():
    t, _ = make(user=3, hard_stop=5)
    fail(t, "carol", n=2)
    t.begin("carol", "a").succeeded()
    assert t.state("carol") is None
    fail(t, "carol", n=2)
    t.begin("carol", "a").failed()
    assert refused(t, "carol").reason == USER_RATE


def test_record_success_and_admin_reset_clear_the_hard_stop():
    t, _ = make(user=100, hard_stop=3)
    fail(t, "dave", n=3)
    assert refused(t, "dave").reason == HARD_STOP
    assert t.reset("DAVE") is True
    assert t.reset("dave") is False
    fail(t, "dave", n=3)
    t.record_success("Dave")
    t.begin("dave", "a").failed()


def test_set_failures_takes_xnats_own_count():
    t, _ = make(user=100, hard_stop=10)
    fail(t, "erin", n=2)
    t.set_failures("erin", 9)
    assert t.state("erin").total == 9
    t.begin("erin", "a").failed()
    assert refused(t, "erin").reason == HARD_STOP
    t.set_failures("erin", 0)
    assert t.state("erin") is None


def test_an_outage_counts_towards_the_total_but_not_the_rate():
    t, _ = make(user=1, hard_stop=3)
    t.begin("frank", "a").inconclusive()
    t.begin("frank", "a").inconclusive()  # the rate limit (1) does not apply to these
    st = t.state("frank")
    assert (st.failures, st.uncertain, st.recent) == (0, 2, ())
    t.begin("frank", "a").inconclusive(counted_by_xnat=False)  # refused connection: nothing
    assert t.state("frank").total == 2
    t.begin("frank", "a").inconclusive()
    assert refused(t, "frank").reason == HARD_STOP


def test_without_an_xnat_lockout_only_the_rates_apply():
    t, clock = make(user=2, hard_stop=None)
    for _ in range(20):
        fail(t, "gina", n=2)
        clock.t += 61
    assert t.state("gina").failures == 40


# -- the file ------------------------------------------------------------------------------------------


def test_counts_survive_a_restart(tmp_path):
    db = tmp_path / "state" / "throttle.sqlite"
    t, clock = make(user=100, hard_stop=10, path=db)
    fail(t, "Hannah", n=10)
    t.close()
    t2 = LoginThrottle(Limit(100, 60), Limit(100, 60), hard_stop=10, path=db, clock=clock)
    assert t2.state("hannah").failures == 10
    assert refused(t2, "hannah").reason == HARD_STOP


def test_the_file_is_private_and_names_no_username(tmp_path):
    db = tmp_path / "throttle.sqlite"
    t, _ = make(path=db)
    pasted = "Correct-Horse-Battery-Staple-42"
    fail(t, pasted)
    fail(t, "ivan")
    open_files = sorted(p.name for p in tmp_path.iterdir())
    assert open_files == ["throttle.sqlite", "throttle.sqlite-shm", "throttle.sqlite-wal"]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in tmp_path.iterdir())
    t.close()
    raw += db.read_bytes()
    for name in (pasted, "ivan"):
        assert name.encode() not in raw and fold_username(name).encode() not in raw


def test_a_reset_by_another_process_takes_effect_at_once(tmp_path):
    db = tmp_path / "throttle.sqlite"
    t, _ = make(user=100, hard_stop=3, path=db)
    fail(t, "judy", n=3)
    admin = ThrottleStore(db, create=False)  # what `xnat-oauth throttle reset` opens
    assert admin.delete(admin.key("JUDY"))
    admin.close()
    t.begin("judy", "a").failed()


def test_a_broken_file_refuses_password_logins(tmp_path):
    t, _ = make(path=tmp_path)  # a directory, not a file
    r = refused(t, "kim")
    assert r.reason == STORE_DOWN and r.status_code == 503 and r.retry_after == 60
    t.record_success("kim")  # never raises
    t.set_failures("kim", 3)


def test_a_failed_write_is_kept_in_memory(tmp_path):
    t, _ = make(user=100, hard_stop=3, path=tmp_path / "t.sqlite")
    fail(t, "leo")
    t.store._db.execute("PRAGMA query_only = ON")  # SQLite refuses every write from now on
    fail(t, "leo", n=2)
    assert t.state("leo").failures == 3
    assert refused(t, "leo").reason == HARD_STOP
    t.store._db.execute("PRAGMA query_only = OFF")
    t.set_failures("leo", 2)
    t.begin("leo", "a").failed()  # the pending failures were replaced by XNAT's count
    assert t.state("leo").failures == 3


def test_a_foreign_file_is_not_used(tmp_path):
    db = tmp_path / "other.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE users (x)").connection.commit()
    t, _ = make(path=db)
    assert refused(t, "mia").reason == STORE_DOWN


# -- bounded under a flood ------------------------------------------------------------------------------


def test_a_flood_of_usernames_is_bounded_and_cannot_drop_a_count_near_the_hard_stop(tmp_path):
    t, clock = make(user=100, addr=10**6, hard_stop=10, path=tmp_path / "t.sqlite", max_usernames=200)
    fail(t, "victim", n=5)  # half the hard stop: kept whatever happens
    fail(t, "typo", n=1)
    for i in range(2000):
        clock.t += 1
        fail(t, f"flood{i}", f"198.51.100.{i % 250}")
        assert t.store.rows <= 200
    assert t.state("victim").failures == 5
    assert t.state("typo") is None  # one failure, the oldest: forgotten first
    assert t.store.recount() <= 200


def test_eviction_takes_the_lowest_counts_first():
    t, clock = make(user=100, addr=10**6, hard_stop=None, max_usernames=10)
    for i in range(10):
        clock.t += 1
        fail(t, f"two{i}", n=2)
    fail(t, "one0", n=1)  # the table was full: the oldest two-failure row made room
    assert t.state("two0") is None
    for i in range(5):
        clock.t += 1
        fail(t, f"one{i + 1}")  # now the one-failure rows go first, oldest first
    assert all(t.state(f"two{i}") is not None for i in range(1, 10))
    assert [t.state(f"one{i}") is not None for i in range(6)] == [False] * 5 + [True]


def test_when_every_count_is_protected_new_usernames_are_refused():
    t, _ = make(user=100, addr=10**6, hard_stop=4, max_usernames=5, openid_service="Google")
    for i in range(5):
        fail(t, f"p{i}", n=2)
    r = refused(t, "newcomer")
    assert r.reason == FULL and "log in with Google" in r.user_message
    fail(t, "p0")  # known usernames still work
    t.record_success("p1")
    t.begin("newcomer", "a").failed()


def test_a_flood_of_addresses_is_bounded():
    t, clock = make(user=10**6, addr=100, max_addresses=50)
    for i in range(1000):
        clock.t += 0.01
        fail(t, f"n{i}", f"2001:db8:{i:x}::1")
        assert len(t._addrs) <= 50


def test_memory_holds_only_what_is_in_flight_or_counting():
    t, clock = make(user=1, addr=1000)
    for i in range(500):
        t.begin(f"scan{i}", f"2001:db8:{i:x}::1").inconclusive(counted_by_xnat=False)
    assert not t._addrs and not t._users_in_flight and t.store.rows == 0


def test_describe_wait():
    assert describe_wait(0.2) == "about 1 second"
    assert describe_wait(45) == "about 45 seconds"
    assert describe_wait(600) == "about 10 minutes"
    assert describe_wait(3 * HOUR) == "about 3 hours"


# -- in front of XNAT (the emulator counts as XNAT does) ---------------------------------------------------


@pytest.fixture
async def xnat_client(xnat):
    c = XnatClient(xnat.url, timeout=5, read_retries=0)
    yield c
    await c.aclose()


async def test_200_wrong_passwords_over_days_never_lock_the_xnat_account(xnat, xnat_client, tmp_path):
    xnat.add_user("Researcher", "right-pw", roles=["Jupyter"])
    clock = Clock()
    throttle = LoginThrottle(
        Limit(5, HOUR), Limit(30, HOUR), hard_stop=hard_stop_for(xnat.lockout_threshold, 10),
        path=tmp_path / "t.sqlite", clock=clock,
    )
    login = PasswordLogin(xnat_client, throttle)
    worst = 0
    for i in range(200):
        try:
            await login.login("researcher" if i % 2 else "RESEARCHER", f"guess-{i}", f"203.0.113.{i % 7}")
        except (XnatAuthError, LoginThrottled):
            pass
        worst = max(worst, xnat.failures("Researcher"))
        clock.t += 17 * 60  # 200 guesses over more than two days
    assert worst == 10 and not xnat.locked("Researcher")
    assert xnat.count("tokens.issue") == 10
    # The user still has XNAT's reserve for their own logins there; and the password works once
    # the admin clears the hub's count after such a login.
    throttle.reset("Researcher")
    record = await login.login("Researcher", "right-pw", "203.0.113.9")
    assert record.username == "Researcher" and xnat.failures("Researcher") == 0
    assert throttle.state("researcher") is None


async def test_a_restart_does_not_give_a_guesser_a_fresh_allowance(xnat, xnat_client, tmp_path):
    xnat.add_user("Researcher", "right-pw", roles=["Jupyter"])
    db = tmp_path / "t.sqlite"
    clock = Clock()
    for _restart in range(5):
        throttle = LoginThrottle(Limit(5, HOUR), Limit(30, HOUR), hard_stop=10, path=db, clock=clock)
        login = PasswordLogin(xnat_client, throttle)
        for i in range(8):
            with pytest.raises((XnatAuthError, LoginThrottled)):
                await login.login("researcher", f"guess-{i}", "203.0.113.1")
            clock.t += HOUR
        throttle.close()
    assert xnat.failures("Researcher") == 10 and not xnat.locked("Researcher")
