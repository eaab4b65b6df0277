"""Throttle for failed password logins.

XNAT locks an account after 20 failed logins (site default) for an hour, and answers every
failure with the same 401. A hub that forwards every guess would let anyone lock a
researcher out of XNAT by typing their username into the hub's form. So the hub keeps its
own, lower, limits per username and per client address, and stops asking XNAT once they are
reached.

In-flight attempts count as failures until they end: twenty concurrent guesses for one
username must not all reach XNAT before the first failure is recorded.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable


@dataclass
class Limit:
    max_failures: int
    window: float  # seconds


class _Window:
    """Failure timestamps within a sliding window, plus attempts still in flight."""

    __slots__ = ("failures", "in_flight")

    def __init__(self):
        self.failures: deque[float] = deque()
        self.in_flight = 0

    def prune(self, now: float, window: float):
        while self.failures and self.failures[0] <= now - window:
            self.failures.popleft()

    def load(self) -> int:
        return len(self.failures) + self.in_flight


class LoginThrottle:
    """Sliding-window failure limits keyed by username and by client address."""

    def __init__(self, per_user: Limit, per_address: Limit, clock: Callable[[], float] = time.monotonic):
        self.per_user = per_user
        self.per_address = per_address
        self._clock = clock
        self._users: dict[str, _Window] = defaultdict(_Window)
        self._addrs: dict[str, _Window] = defaultdict(_Window)

    @staticmethod
    def _user_key(username: str) -> str:
        # XNAT matches usernames case-insensitively at login, so must the throttle.
        return username.strip().lower()

    def _windows(self, username: str, address: str):
        now = self._clock()
        u = self._users[self._user_key(username)]
        a = self._addrs[address]
        u.prune(now, self.per_user.window)
        a.prune(now, self.per_address.window)
        return now, u, a

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until an attempt is allowed; 0 when allowed now."""
        now, u, a = self._windows(username, address)
        waits = []
        for w, limit in ((u, self.per_user), (a, self.per_address)):
            if w.load() >= limit.max_failures:
                oldest = w.failures[0] if w.failures else now
                waits.append(max(1.0, oldest + limit.window - now))
        return max(waits, default=0.0)

    def begin(self, username: str, address: str) -> "Attempt | None":
        """Reserve an attempt, or None when a limit is reached (do not ask XNAT)."""
        if self.retry_after(username, address):
            return None
        _, u, a = self._windows(username, address)
        u.in_flight += 1
        a.in_flight += 1
        return Attempt(self, u, a)

    def _clean(self):
        # Bound memory: drop empty windows (a scan of usernames must not grow the dict for ever).
        for d in (self._users, self._addrs):
            for k in [k for k, w in d.items() if not w.failures and not w.in_flight]:
                del d[k]


class Attempt:
    """One reserved login attempt; end it with exactly one of the three outcomes."""

    def __init__(self, throttle: LoginThrottle, u: _Window, a: _Window):
        self._t, self._u, self._a = throttle, u, a
        self._done = False

    def _end(self):
        if self._done:
            return False
        self._done = True
        self._u.in_flight -= 1
        self._a.in_flight -= 1
        return True

    def failed(self):
        """XNAT refused the password."""
        if self._end():
            now = self._t._clock()
            self._u.failures.append(now)
            self._a.failures.append(now)

    def succeeded(self):
        """Right password: the user's own failures are forgiven, as XNAT forgives them."""
        if self._end():
            self._u.failures.clear()
            self._t._clean()

    def inconclusive(self):
        """XNAT did not answer: not the user's fault, nothing counted."""
        if self._end():
            self._t._clean()
