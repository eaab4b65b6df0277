"""``xnat-oauth throttle show|reset``: the admin's view of the password throttle's file.

The hub reads the file on every password attempt, so a reset takes effect at once, with the hub
running. The file holds salted hashes, not usernames: ``show`` without names lists counts by
an id; ``show NAME`` and ``reset NAME`` hash the name given.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .throttle import (
    DEFAULT_DB,
    DEFAULT_RESERVE,
    XNAT_MAX_FAILED_LOGINS,
    ThrottleStore,
    UserState,
    hard_stop_for,
)

#: how much of an id ``reset --id`` needs (ids are 12 hex digits in ``show``)
MIN_ID_PREFIX = 8
SHOW_LIMIT = 50


class AdminError(Exception):
    """Something the admin must change; the message says what."""


@dataclass(frozen=True)
class Settings:
    db: Path
    hard_stop: int | None
    per_user: int
    window: float


def settings(config_file: str | None, db: str | None) -> Settings:
    """The file and limits the hub's config names (``--db`` wins over the config's file)."""
    from .check import DEFAULT_CONFIG_FILE, FAIL, load_config

    section: dict = {}
    if config_file is not None or Path(DEFAULT_CONFIG_FILE).is_file():
        config, _, outcome = load_config(config_file)
        if outcome.status == FAIL:
            raise AdminError(outcome.detail + (f" ({outcome.fix})" if outcome.fix else ""))
        section = dict(config.XnatOAuthenticator) if "XnatOAuthenticator" in config else {}
    path = db if db is not None else section.get("password_throttle_db", DEFAULT_DB)
    if not path:
        raise AdminError(
            "c.XnatOAuthenticator.password_throttle_db is empty: the hub keeps its counts in memory, "
            "where a restart clears them; there is no file to show or change"
        )
    return Settings(
        db=Path(path).expanduser().resolve(),
        hard_stop=hard_stop_for(
            int(section.get("xnat_max_failed_logins", XNAT_MAX_FAILED_LOGINS)),
            int(section.get("password_failures_reserved_for_xnat", DEFAULT_RESERVE)),
        ),
        per_user=int(section.get("password_max_failures_per_user", 5)),
        window=float(section.get("password_throttle_window", 3600.0)),
    )


def _open(s: Settings) -> ThrottleStore:
    try:
        # a patient lock wait: the hub holds the file for microseconds at a time
        return ThrottleStore(s.db, create=False, busy_timeout=5.0)
    except FileNotFoundError:
        raise AdminError(
            f"no throttle file at {s.db}: the hub creates it at the first failed password login. "
            "Run this in the hub's working directory, or give the file with --db"
        ) from None
    except sqlite3.Error as e:
        raise AdminError(f"{s.db} cannot be used as the throttle file ({e})") from None


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _state_word(st: UserState, s: Settings, now: float) -> str:
    if s.hard_stop is not None and st.total >= s.hard_stop:
        return "stopped"
    if sum(1 for t in st.recent if t > now - s.window) >= s.per_user:
        return "waiting"
    return "counting"


def _describe(st: UserState | None, s: Settings, now: float) -> str:
    if st is None:
        return "nothing counted"
    word = _state_word(st, s, now)
    stop = f" of {s.hard_stop}" if s.hard_stop is not None else ""
    extra = f" ({st.uncertain} of them unanswered by XNAT)" if st.uncertain else ""
    why = {
        "stopped": "the hub forwards no password for it",
        "waiting": f"{s.per_user} or more within {s.window:g}s; the hub waits",
        "counting": "the hub still forwards passwords",
    }[word]
    return (
        f"{st.total}{stop} failed attempts since the last successful password login{extra}, "
        f"last at {_when(st.last)} UTC: {word} ({why}); id {st.id[:12]}"
    )


def show(s: Settings, names: list[str], out: TextIO, *, now: float) -> int:
    store = _open(s)
    try:
        stop = f"hard stop at {s.hard_stop} failures" if s.hard_stop is not None else "no hard stop"
        print(f"throttle file: {s.db} ({store.rows} usernames counted; {stop})", file=out)
        if names:
            for name in names:
                print(f"{name}: {_describe(store.get(store.key(name)), s, now)}", file=out)
            return 0
        rows = list(store.entries(SHOW_LIMIT))
        if not rows:
            return 0
        print(f"{'ID':<14}{'FAILURES':>9}{'UNANSWERED':>12}  {'LAST (UTC)':<21}STATE", file=out)
        for st in rows:
            print(
                f"{st.id[:12]:<14}{st.failures:>9}{st.uncertain:>12}  {_when(st.last):<21}{_state_word(st, s, now)}",
                file=out,
            )
        if store.rows > len(rows):
            print(f"... and {store.rows - len(rows)} more with fewer failures", file=out)
        return 0
    finally:
        store.close()


def reset(s: Settings, names: list[str], ids: list[str], out: TextIO, *, now: float) -> int:
    store = _open(s)
    try:
        for name in names:
            key = store.key(name)
            st = store.get(key)
            if st is None:
                print(f"{name}: nothing to clear", file=out)
                continue
            store.delete(key)
            print(f"{name}: cleared {st.total} failed attempts", file=out)
        for prefix in ids:
            p = prefix.strip().lower()
            if len(p) < MIN_ID_PREFIX or any(c not in "0123456789abcdef" for c in p):
                raise AdminError(f"{prefix!r} is not an id from `xnat-oauth throttle show` (at least {MIN_ID_PREFIX} hex digits)")
            matches = store.with_prefix(p)
            if len(matches) != 1:
                what = "no username" if not matches else "several usernames; give more of it"
                raise AdminError(f"id {prefix} matches {what}")
            store.delete(matches[0].id)
            print(f"id {prefix}: cleared {matches[0].total} failed attempts", file=out)
        print(
            "Clear a count only once the user has logged in to XNAT directly with the right password "
            "(or has not guessed at all): that login is what resets XNAT's own count, which the hub's "
            "count stands for.",
            file=out,
        )
        return 0
    finally:
        store.close()
