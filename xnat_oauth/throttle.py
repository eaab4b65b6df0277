"""Throttle for failed password logins, matched to XNAT's failed-login counter.

XNAT counts failed logins per account and auth method and never forgets them: only a
successful login with that method resets the count (``XnatAuthenticationEventPublisher``:
``clearCount`` on success, ``addFailedLoginAttempt`` on failure, per ``xhbm_xdat_user_auth``
row). 20 failures (``maxFailedLogins``) lock the account. The hourly ``ResetFailedLogins`` task
only unlocks accounts that are already locked. So a throttle that forgets failures after a
window lets a stranger lock a researcher's account a few guesses at a time.

This throttle therefore keeps two counts per username:

* a **total** of failures the hub forwarded since the last successful password login through
  the hub, which never decays. At ``hard_stop`` (XNAT's threshold minus a reserve left for
  logins made directly at XNAT: 20 - 10 by default) the hub stops forwarding passwords for
  that username until a successful password login elsewhere plus an admin reset, or the
  admin reset alone (``xnat-oauth throttle reset USERNAME``);
* a **rate**: failures within ``per_user.window``, which slows guessing long before that.

Per client address there is a sliding window (``per_address``), so one address cannot spray
guesses over many usernames. Attempts still in flight count as failures until they end:
twenty concurrent guesses for one username must not all reach XNAT before the first failure is
recorded. An attempt whose outcome is unknown (XNAT timed out) counts towards the total, not
the rate: XNAT may have counted it.

Usernames are folded (NFKC, casefold) because XNAT's password login matches names without
regard to case; folding more than XNAT does only makes the throttle stricter. The state of
usernames lives in a small SQLite file that survives a hub restart (addresses are kept in
memory only: they slow a guesser down, while the username counts are what protects XNAT). The
file holds no username: rows are keyed by an HMAC of the folded name with a random salt kept in
the same file, because a password pasted into the username field must not end up on disk.

Memory and disk are bounded (``max_usernames``, ``max_addresses``). When the username table is
full, rows are evicted lowest total first, oldest first, and rows at or above ``protect_from``
(half the hard stop) never are: to make the hub forget ``c`` failures of a victim, a flood has
to fill the whole table with rows of at least ``c`` failures each, every one of them a password
XNAT checked, and it can never make the hub forget a count near the hard stop. If nothing can
be evicted, new usernames are refused (the hub fails closed) until the table has room.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sqlite3
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from traitlets import Bool, HasTraits, Integer, Unicode

from . import metrics
from .client_address import throttle_key
from .errors import LoginThrottled
from .sqlite_store import write_transaction

log = logging.getLogger("xnat_oauth.throttle")

#: XNAT's site default ``maxFailedLogins``
XNAT_MAX_FAILED_LOGINS = 20
#: failures left for logins made directly at XNAT (the web form, scripts, other tools)
DEFAULT_RESERVE = 10
DEFAULT_DB = "xnat-oauth-throttle.sqlite"
DEFAULT_MAX_USERNAMES = 100_000
DEFAULT_MAX_ADDRESSES = 20_000
#: a user blocked only by their own attempts still in flight may try again after this
IN_FLIGHT_RETRY = 5.0
#: how long the hub waits for the SQLite file (held by the admin command) before failing closed
BUSY_TIMEOUT = 0.25
SCHEMA_VERSION = 1

# why an attempt was refused
USER_RATE = "user-rate"
ADDRESS_RATE = "address-rate"
HARD_STOP = "hard-stop"
FULL = "full"
STORE_DOWN = "store-unavailable"


@dataclass(frozen=True)
class Limit:
    max_failures: int
    window: float  # seconds


def hard_stop_for(xnat_max_failed_logins: int, reserve: int) -> int | None:
    """Where the hub stops forwarding: XNAT's threshold minus the reserve (at least 1).

    None when XNAT never locks accounts (``maxFailedLogins`` 0 or less): then only the rate
    limits apply.
    """
    if xnat_max_failed_logins <= 0:
        return None
    return max(1, xnat_max_failed_logins - max(0, reserve))


def fold_username(username: str) -> str:
    """The name as the throttle counts it: every spelling XNAT may take for one account."""
    return unicodedata.normalize("NFKC", (username or "").strip()).casefold()


def describe_wait(seconds: float) -> str:
    """``seconds`` for a person: "about 40 seconds", "about 12 minutes", "about 2 hours"."""
    s = max(1, math.ceil(seconds))
    if s < 90:
        return f"about {s} second{'s' if s != 1 else ''}"
    m = math.ceil(s / 60)
    if m < 90:
        return f"about {m} minutes"
    return f"about {math.ceil(m / 60)} hours"


class ThrottleRefused(LoginThrottled):
    """A password attempt the hub will not forward to XNAT.

    ``user_message`` says what to do; ``retry_after`` is the number of seconds after which a new
    attempt may be accepted (send it as ``Retry-After``), or None when waiting does not help
    (the hard stop). ``reason`` is one of ``user-rate``, ``address-rate``, ``hard-stop``,
    ``full``, ``store-unavailable``. ``str(err)`` is for the admin's log and names no username.
    """

    def __init__(
        self,
        message: str,
        *,
        user_message: str,
        retry_after: float | None,
        reason: str,
        status_code: int = 429,
    ):
        super().__init__(message, user_message=user_message)
        self.retry_after = None if retry_after is None else float(max(1, math.ceil(retry_after)))
        self.reason = reason
        self.status_code = status_code


@dataclass(frozen=True)
class UserState:
    """What the throttle holds for one username (``xnat-oauth throttle show``)."""

    id: str
    failures: int  # XNAT refused the password
    uncertain: int  # XNAT's answer never came; it may have counted them
    recent: tuple[float, ...]  # times of the latest failures, oldest first
    first: float | None
    last: float | None

    @property
    def total(self) -> int:
        return self.failures + self.uncertain


# -- the SQLite file ---------------------------------------------------------------------------


class ThrottleStore:
    """Per-username counts in SQLite, keyed by an HMAC of the folded name.

    ``path`` None keeps everything in memory (lost at restart: tests only). The file is created
    readable by its owner only. WAL with ``synchronous=NORMAL``: a commit costs no fsync, an
    application crash loses nothing, a power cut at most the last moments' counts.
    """

    def __init__(self, path: str | os.PathLike | None, *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT):
        self.path = None if path is None else Path(path)
        if self.path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            if not self.path.exists():
                if not create:
                    raise FileNotFoundError(str(self.path))
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            # mode=rw: never create a file here by accident (the admin command names one)
            self._db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=busy_timeout
            )
        try:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS users (
                    key TEXT PRIMARY KEY,
                    failures INTEGER NOT NULL,
                    uncertain INTEGER NOT NULL,
                    total INTEGER NOT NULL,
                    recent TEXT NOT NULL,
                    first REAL NOT NULL,
                    last REAL NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS users_evict ON users (total, last);
                """
            )
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('salt', ?), ('schema', ?)",
                (secrets.token_bytes(32), SCHEMA_VERSION),
            )
            row = self._db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()
            self._salt = bytes(row[0])
            self.rows = self._db.execute("SELECT count(*) FROM users").fetchone()[0]
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def key(self, username: str) -> str:
        return hmac.new(self._salt, fold_username(username).encode("utf-8"), hashlib.sha256).hexdigest()

    def get(self, key: str) -> UserState | None:
        row = self._db.execute(
            "SELECT key, failures, uncertain, recent, first, last FROM users WHERE key = ?", (key,)
        ).fetchone()
        return _state(row) if row else None

    def add(self, key: str, now: float, *, failures: int = 0, uncertain: int = 0, keep_recent: int = 0) -> None:
        """Add failures (timestamped into ``recent``, of which the last ``keep_recent`` stay) and
        uncertain attempts (not timestamped) to a username's row."""
        with write_transaction(self._db) as db:
            old = self.get(key)
            recent = list(old.recent) if old else []
            recent.extend([now] * failures)
            recent = recent[-keep_recent:] if keep_recent > 0 else []
            f = (old.failures if old else 0) + failures
            u = (old.uncertain if old else 0) + uncertain
            if old is None:
                db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, f, u, f + u, json.dumps(recent), now, now),
                )
            else:
                db.execute(
                    "UPDATE users SET failures = ?, uncertain = ?, total = ?, recent = ?, last = ? WHERE key = ?",
                    (f, u, f + u, json.dumps(recent), now, key),
                )
        if old is None:
            self.rows += 1

    def set_total(self, key: str, failures: int, now: float) -> None:
        if failures <= 0:
            self.delete(key)
            return
        old = self.get(key)
        self._db.execute(
            "INSERT INTO users VALUES (?, ?, 0, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "failures = excluded.failures, uncertain = 0, total = excluded.total, last = excluded.last",
            (key, failures, failures, json.dumps(list(old.recent) if old else []), now, now),
        )
        if old is None:
            self.rows += 1

    def delete(self, key: str) -> bool:
        gone = self._db.execute("DELETE FROM users WHERE key = ?", (key,)).rowcount > 0
        if gone:
            self.rows -= 1
        return gone

    def with_prefix(self, prefix: str, limit: int = 2) -> list[UserState]:
        """Rows whose key starts with ``prefix`` (an id from ``show``), at most ``limit``."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        cur = self._db.execute(
            "SELECT key, failures, uncertain, recent, first, last FROM users WHERE key >= ? AND key < ? LIMIT ?",
            (prefix, prefix + "g", limit),
        )
        return [_state(row) for row in cur]

    def recount(self) -> int:
        self.rows = self._db.execute("SELECT count(*) FROM users").fetchone()[0]
        return self.rows

    def evict(self, n: int, protect_from: int | None) -> int:
        """Delete up to ``n`` rows, lowest total first, oldest first, never one at ``protect_from``."""
        limit = protect_from if protect_from is not None else 2**62
        deleted = self._db.execute(
            "DELETE FROM users WHERE key IN "
            "(SELECT key FROM users WHERE total < ? ORDER BY total, last LIMIT ?)",
            (limit, n),
        ).rowcount
        self.rows -= deleted
        return deleted

    def entries(self, limit: int = 1000) -> Iterator[UserState]:
        """Rows, highest total first."""
        cur = self._db.execute(
            "SELECT key, failures, uncertain, recent, first, last FROM users ORDER BY total DESC, last DESC LIMIT ?",
            (limit,),
        )
        for row in cur:
            yield _state(row)


def _state(row) -> UserState:
    key, failures, uncertain, recent, first, last = row
    try:
        times = tuple(float(t) for t in json.loads(recent))
    except (ValueError, TypeError):
        times = ()
    return UserState(key, int(failures), int(uncertain), times, first, last)


# -- addresses, in memory ------------------------------------------------------------------------


class _AddressWindow:
    __slots__ = ("failures", "in_flight")

    def __init__(self, keep: int):
        self.failures: deque[float] = deque(maxlen=max(1, keep))
        self.in_flight = 0

    def in_window(self, now: float, window: float) -> list[float]:
        return [t for t in self.failures if t > now - window]

    def idle(self, now: float, window: float) -> bool:
        return not self.in_flight and not self.in_window(now, window)


# -- the throttle ----------------------------------------------------------------------------------


class LoginThrottle:
    """Failure limits per username (rate and non-decaying total) and per client address.

    Use: ``attempt = throttle.begin(username, address)`` (raises :class:`ThrottleRefused`), ask
    XNAT, then exactly one of ``attempt.failed()``, ``attempt.succeeded()``,
    ``attempt.inconclusive()``. ``clock`` is wall-clock seconds (the state outlives the process).
    ``openid_service`` (e.g. "AAF") and ``xnat_url`` go into the refusal messages.
    """

    def __init__(
        self,
        per_user: Limit,
        per_address: Limit,
        *,
        hard_stop: int | None = XNAT_MAX_FAILED_LOGINS - DEFAULT_RESERVE,
        path: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.time,
        max_usernames: int = DEFAULT_MAX_USERNAMES,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        protect_from: int | None = None,
        openid_service: str | None = None,
        xnat_url: str | None = None,
    ):
        self.per_user = per_user
        self.per_address = per_address
        self.hard_stop = hard_stop if hard_stop is None or hard_stop > 0 else None
        if protect_from is None and self.hard_stop is not None:
            protect_from = max(1, math.ceil(self.hard_stop / 2))
        self.protect_from = protect_from
        self.max_usernames = max(1, int(max_usernames))
        self.max_addresses = max(1, int(max_addresses))
        self.openid_service = openid_service or None
        self.xnat_url = xnat_url or None
        self._clock = clock
        self._path = path
        self._store: ThrottleStore | None = None
        self._store_error: str | None = None
        self._users_in_flight: dict[str, int] = {}
        # failures XNAT saw that could not be written to the file yet: (failures, uncertain)
        self._unsaved: dict[str, list[int]] = {}
        self._addrs: dict[str, _AddressWindow] = {}

    # -- the file ------------------------------------------------------------------------------

    @property
    def store(self) -> ThrottleStore:
        """The SQLite store, opened on first use (a refusal, not a crash, if it cannot be)."""
        if self._store is None:
            self._store = ThrottleStore(self._path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _user(self, key: str) -> UserState | None:
        st = self.store.get(key)
        pending = self._unsaved.get(key)
        if pending:
            base = st or UserState(key, 0, 0, (), None, None)
            st = UserState(key, base.failures + pending[0], base.uncertain + pending[1], base.recent, base.first, base.last)
        return st

    # -- deciding ------------------------------------------------------------------------------

    def check(self, username: str, address: str) -> ThrottleRefused | None:
        """The refusal an attempt would get now, or None. Reserves nothing."""
        try:
            return self._check(username, address)[0]
        except (sqlite3.Error, OSError) as e:
            return self._store_down(e)

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until an attempt may be accepted: 0 if now, ``inf`` at the hard stop."""
        refusal = self.check(username, address)
        if refusal is None:
            return 0.0
        return math.inf if refusal.retry_after is None else refusal.retry_after

    def begin(self, username: str, address: str) -> "Attempt":
        """Reserve an attempt for ``username`` from ``address``; raise ThrottleRefused if refused."""
        try:
            refusal, key, akey, known = self._check(username, address)
            if refusal is None and not known:
                refusal = self._make_room(key)
        except (sqlite3.Error, OSError) as e:
            down = self._store_down(e)
            metrics.record_throttle_refusal(down.reason)
            raise down from None
        if refusal is None and akey not in self._addrs:
            refusal = self._make_address_room()
        if refusal is not None:
            metrics.record_throttle_refusal(refusal.reason)
            raise refusal
        self._users_in_flight[key] = self._users_in_flight.get(key, 0) + 1
        aw = self._addrs.get(akey)
        if aw is None:
            aw = self._addrs[akey] = _AddressWindow(self.per_address.max_failures)
        aw.in_flight += 1
        return Attempt(self, key, akey)

    def _check(self, username: str, address: str):
        now = self._clock()
        key = self.store.key(username)
        akey = throttle_key(address)
        who = f"username id {key[:12]} from {akey}"
        st = self._user(key)
        flying = self._users_in_flight.get(key, 0)
        total = st.total if st else 0

        if self.hard_stop is not None and total >= self.hard_stop:
            return self._refuse(
                HARD_STOP,
                f"password login refused for {who}: {total} failed attempts since the last "
                f"successful password login (hard stop at {self.hard_stop}); clear with "
                f"`xnat-oauth throttle reset` once the user has logged in to XNAT",
                self._hard_stop_message(),
                None,
            ), key, akey, True
        if self.hard_stop is not None and total + flying >= self.hard_stop:
            return self._refuse(
                USER_RATE,
                f"password login refused for {who}: attempts in flight would reach the hard stop",
                self._rate_message("for this username", IN_FLIGHT_RETRY),
                IN_FLIGHT_RETRY,
            ), key, akey, True

        recent = [t for t in (st.recent if st else ()) if t > now - self.per_user.window]
        wait = _window_wait(recent, flying, self.per_user, now)
        if wait is not None:
            return self._refuse(
                USER_RATE,
                f"password login refused for {who}: {len(recent)} failures within "
                f"{self.per_user.window:g}s (limit {self.per_user.max_failures})",
                self._rate_message("for this username", wait),
                wait,
            ), key, akey, True

        aw = self._addrs.get(akey)
        if aw is not None:
            wait = _window_wait(aw.in_window(now, self.per_address.window), aw.in_flight, self.per_address, now)
            if wait is not None:
                return self._refuse(
                    ADDRESS_RATE,
                    f"password login refused for {who}: the address reached "
                    f"{self.per_address.max_failures} failures within {self.per_address.window:g}s",
                    self._rate_message("from your network address", wait),
                    wait,
                ), key, akey, True
        return None, key, akey, st is not None or flying > 0

    def _refuse(self, reason, message, user_message, retry_after, status_code=429) -> ThrottleRefused:
        return ThrottleRefused(
            message, user_message=user_message, retry_after=retry_after, reason=reason, status_code=status_code
        )

    def _make_room(self, key: str) -> ThrottleRefused | None:
        """Room for one more username row, evicting if the table is full."""
        store = self.store
        if len(self._unsaved) >= self.max_usernames:
            return self._full()
        if store.rows < self.max_usernames:
            return None
        if store.recount() < self.max_usernames:
            return None
        batch = max(1, self.max_usernames // 100)
        evicted = store.evict(batch, self.protect_from)
        if evicted:
            log.warning(
                "password throttle: %d usernames tracked (the limit); forgot the %d with the fewest failures",
                self.max_usernames,
                evicted,
            )
            return None
        log.error(
            "password throttle: %d usernames tracked, all near the hard stop; refusing new usernames",
            store.rows,
        )
        return self._full()

    def _make_address_room(self) -> ThrottleRefused | None:
        if len(self._addrs) < self.max_addresses:
            return None
        now = self._clock()
        window = self.per_address.window
        for k in [k for k, w in self._addrs.items() if w.idle(now, window)]:
            del self._addrs[k]
        if len(self._addrs) < self.max_addresses:
            return None
        evictable = sorted(
            ((len(w.in_window(now, window)), w.failures[-1] if w.failures else 0.0, k)
             for k, w in self._addrs.items() if not w.in_flight),
        )
        for _, _, k in evictable[: max(1, self.max_addresses // 10)]:
            del self._addrs[k]
        if len(self._addrs) < self.max_addresses:
            log.warning("password throttle: %d client addresses tracked (the limit); forgot the quietest", self.max_addresses)
            return None
        return self._full()

    def _full(self) -> ThrottleRefused:
        return self._refuse(
            FULL,
            "password login refused: the throttle's tables are full of failing usernames or addresses",
            "The hub is receiving too many failed logins to check more passwords right now. "
            f"Please try again in {describe_wait(self.per_user.window)}{self._openid_alternative()}.",
            self.per_user.window,
        )

    def _store_down(self, err: Exception) -> ThrottleRefused:
        text = f"{type(err).__name__}: {err}"
        if text != self._store_error:
            log.error("password throttle: its file %s cannot be used (%s); refusing password logins", self._path, text)
            self._store_error = text
        return self._refuse(
            STORE_DOWN,
            f"password login refused: the throttle's file cannot be used ({type(err).__name__})",
            "Password login is unavailable at the moment. Please try again in a minute"
            f"{self._openid_alternative()}.",
            60,
            status_code=503,
        )

    # -- messages ------------------------------------------------------------------------------

    def _openid_alternative(self) -> str:
        return f", or log in with {self.openid_service}" if self.openid_service else ""

    def _rate_message(self, where: str, wait: float) -> str:
        return f"Too many failed login attempts {where}. Please wait {describe_wait(wait)} and try again."

    def _hard_stop_message(self) -> str:
        ways = []
        if self.openid_service:
            ways.append(f"log in with {self.openid_service} instead")
        at = f" at {self.xnat_url}" if self.xnat_url else ""
        ways.append(
            f"log in to XNAT directly{at} with your password, then ask this hub's administrator to "
            "clear the hub's count of failed attempts for your username"
        )
        return (
            "Too many failed login attempts for this username: to keep your XNAT account from being "
            "locked, this hub has stopped checking passwords for it. To get back in, "
            + "; or ".join(ways)
            + "."
        )

    # -- recording -----------------------------------------------------------------------------

    def record_success(self, username: str) -> None:
        """XNAT accepted this user's password: its failure count is reset, so is the hub's.

        Call it only after XNAT accepted the PASSWORD. XNAT resets the count of the auth method
        that succeeded (``XnatAuthenticationEventPublisher.clearCount``); an OpenID or alias-token
        login resets another row, not the password's. For such logins use :meth:`set_failures`
        with the count XNAT reports, or nothing. Never raises.
        """
        try:
            key = self.store.key(username)
        except (sqlite3.Error, OSError) as e:
            log.error("password throttle: could not reset a username's count (%s)", type(e).__name__)
            return
        self._forget(key)

    def reset(self, username: str) -> bool:
        """The admin's reset; True if there was anything to forget."""
        key = self.store.key(username)
        had = self._user(key) is not None
        self._forget(key)
        return had

    def set_failures(self, username: str, failures: int) -> None:
        """Make the hub's count XNAT's own (read from XNAT after another kind of login).

        Never raises: on a broken file the hub's count stays as it was.
        """
        try:
            key = self.store.key(username)
            self.store.set_total(key, int(failures), self._clock())
        except (sqlite3.Error, OSError) as e:
            log.error("password throttle: could not set a username's count (%s)", type(e).__name__)
            return
        self._unsaved.pop(key, None)

    def state(self, username: str) -> UserState | None:
        return self._user(self.store.key(username))

    def _forget(self, key: str) -> None:
        self._unsaved.pop(key, None)
        try:
            self.store.delete(key)
        except (sqlite3.Error, OSError) as e:
            # The count stays: the hub errs on the strict side.
            log.error("password throttle: could not reset a username's count (%s)", type(e).__name__)

    def _record(self, key: str, akey: str, *, failure: bool, uncertain: bool) -> None:
        now = self._clock()
        if failure:
            aw = self._addrs.get(akey)
            if aw is not None:
                aw.failures.append(now)
        if not (failure or uncertain):
            return
        pending = self._unsaved.pop(key, [0, 0])
        pending[0] += int(failure)
        pending[1] += int(uncertain)
        try:
            self.store.add(
                key, now, failures=pending[0], uncertain=pending[1], keep_recent=self.per_user.max_failures
            )
        except (sqlite3.Error, OSError) as e:
            self._unsaved[key] = pending
            log.error(
                "password throttle: could not write a failed attempt to %s (%s); kept in memory",
                self._path,
                type(e).__name__,
            )

    def _end(self, key: str, akey: str) -> None:
        n = self._users_in_flight.get(key, 0) - 1
        if n > 0:
            self._users_in_flight[key] = n
        else:
            self._users_in_flight.pop(key, None)
        aw = self._addrs.get(akey)
        if aw is not None:
            aw.in_flight = max(0, aw.in_flight - 1)
            if aw.idle(self._clock(), self.per_address.window):
                del self._addrs[akey]


def _window_wait(recent: list[float], flying: int, limit: Limit, now: float) -> float | None:
    """Seconds until ``recent`` failures plus ``flying`` attempts fall below the limit, or None."""
    if len(recent) + flying < limit.max_failures:
        return None
    drop = len(recent) + flying - limit.max_failures + 1
    if drop > len(recent):
        return IN_FLIGHT_RETRY
    return max(1.0, recent[drop - 1] + limit.window - now)


class Attempt:
    """One reserved attempt; end it with exactly one of the three outcomes (later calls do nothing)."""

    __slots__ = ("_t", "_key", "_akey", "_done")

    def __init__(self, throttle: LoginThrottle, key: str, akey: str):
        self._t, self._key, self._akey = throttle, key, akey
        self._done = False

    def _finish(self, record: Callable[[], None]) -> None:
        if self._done:
            return
        self._done = True
        try:
            record()  # before the attempt stops counting: no moment where it counts for nothing
        finally:
            self._t._end(self._key, self._akey)

    def failed(self) -> None:
        """XNAT refused the password: one more failure for the username and the address."""
        self._finish(lambda: self._t._record(self._key, self._akey, failure=True, uncertain=False))

    def succeeded(self) -> None:
        """XNAT accepted the password: XNAT forgot the username's failures, so does the hub."""
        self._finish(lambda: self._t._forget(self._key))

    def inconclusive(self, *, counted_by_xnat: bool | None = None) -> None:
        """XNAT's verdict never came (timeout, dropped connection, cancelled request).

        ``counted_by_xnat`` None (unknown) counts the attempt towards the username's total but
        not its rate: XNAT may have counted it, and the user is not to blame. Pass False when
        the password cannot have been checked (the connection was refused, or XNAT answered
        something other than 401: a 5xx comes from before or instead of the password check).
        """
        counted = counted_by_xnat is not False
        self._finish(lambda: self._t._record(self._key, self._akey, failure=False, uncertain=counted))


# -- settings -------------------------------------------------------------------------------------


class PasswordThrottleSettings(HasTraits):
    """The throttle's settings, for the authenticator to inherit (``c.XnatOAuthenticator.*``).

    The older ``password_max_failures_per_user``, ``password_max_failures_per_address`` and
    ``password_throttle_window`` stay where they are; :func:`throttle_from_settings` reads both.
    """

    password_throttle_db = Unicode(
        DEFAULT_DB,
        config=True,
        help="""SQLite file where the hub keeps failed password logins per username, so that a
        restart forgets nothing (relative paths are relative to the hub's working directory,
        like ``jupyterhub.sqlite``). It holds no username or password: rows are keyed by a
        salted hash. Empty: keep the counts in memory only (they are then lost at every
        restart; for tests). ``xnat-oauth throttle show|reset`` read and change it.""",
    )
    xnat_max_failed_logins = Integer(
        XNAT_MAX_FAILED_LOGINS,
        config=True,
        help="""XNAT's own lockout threshold: the site setting ``maxFailedLogins`` (20 by
        default; 0 or less means XNAT never locks accounts). Failed logins count in XNAT until a
        successful login, however long ago they were; the hub stops forwarding passwords for a
        username ``password_failures_reserved_for_xnat`` failures before this.""",
    )
    password_failures_reserved_for_xnat = Integer(
        DEFAULT_RESERVE,
        config=True,
        help="""Failed logins left for the user's own logins directly at XNAT (its web form,
        scripts, other tools). The hub stops forwarding passwords for a username once it has
        forwarded ``xnat_max_failed_logins`` minus this many failures since the username's
        last successful password login (10 with the defaults), whatever time has passed. The
        user then gets back in with the OpenID button, or by logging in to XNAT directly
        and asking the admin for ``xnat-oauth throttle reset USERNAME``.""",
    )
    password_throttle_max_usernames = Integer(
        DEFAULT_MAX_USERNAMES,
        config=True,
        help="""Most usernames the throttle keeps counts for. Past it the counts with the
        fewest failures are forgotten first; counts of half the hard stop or more never are (new
        usernames are refused instead).""",
    )
    password_throttle_max_addresses = Integer(
        DEFAULT_MAX_ADDRESSES,
        config=True,
        help="""Most client addresses the per-address limit keeps (in memory). Past it the
        quietest are forgotten first.""",
    )
    trust_loopback_proxy = Bool(
        True,
        config=True,
        help="""Believe ``X-Forwarded-For`` entries added by a proxy connecting from this machine
        (the hub's own configurable-http-proxy, or an nginx beside it), as well as by the
        addresses in ``c.JupyterHub.trusted_downstream_ips``. Turn off only if untrusted local
        processes can reach the hub's port directly.""",
    )


def throttle_from_settings(auth, *, openid_service: str | None = None) -> LoginThrottle:
    """The throttle an authenticator's settings describe (the lead wires this in)."""
    return LoginThrottle(
        per_user=Limit(auth.password_max_failures_per_user, auth.password_throttle_window),
        per_address=Limit(auth.password_max_failures_per_address, auth.password_throttle_window),
        hard_stop=hard_stop_for(auth.xnat_max_failed_logins, auth.password_failures_reserved_for_xnat),
        path=auth.password_throttle_db or None,
        max_usernames=auth.password_throttle_max_usernames,
        max_addresses=auth.password_throttle_max_addresses,
        openid_service=openid_service,
        xnat_url=getattr(auth, "xnat_url", None) or None,
    )


__all__ = [
    "ADDRESS_RATE",
    "Attempt",
    "FULL",
    "HARD_STOP",
    "Limit",
    "LoginThrottle",
    "PasswordThrottleSettings",
    "STORE_DOWN",
    "ThrottleRefused",
    "ThrottleStore",
    "USER_RATE",
    "UserState",
    "describe_wait",
    "fold_username",
    "hard_stop_for",
    "throttle_from_settings",
]
