"""One identity, one account, for good: (issuer, sub) bound to the hub user at its first login.

A username pattern can render two people to one name (``alice@x`` and ``alice_x`` both become
``alice_x``; ``jöhn`` and ``jähn`` both ``j_hn``), and XNAT's own auth mapping is keyed on that
rendering too, so neither the hub nor XNAT would notice. The only stable key of a person is the
pair (issuer, sub) (OpenID Connect Core 5.7), so the first successful login binds it to the hub
user, and later logins must agree:

* an identity stays with the hub user it was first bound to;
* a hub user takes at most one subject of each issuer. A person whose XNAT account is linked to
  several providers (AAF and Google, with the plugin's ``linkExisting``) may use each of them.

Bindings live in a small SQLite file beside the hub's database, so they survive restarts. An
admin can list and release them (``xnat-oauth bindings``), e.g. after merging accounts in XNAT.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .auth_state import Identity
from .oidc.errors import IdentityConflict
from .sqlite_store import open_state_db, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_bindings (
    issuer TEXT NOT NULL,
    sub TEXT NOT NULL,
    username TEXT NOT NULL,
    provider TEXT NOT NULL,
    bound_at REAL NOT NULL,
    PRIMARY KEY (issuer, sub),
    UNIQUE (username, issuer)
)
"""


@dataclass(frozen=True)
class Binding:
    issuer: str
    sub: str
    username: str
    provider: str
    bound_at: float


class IdentityBindings:
    """The bindings in the SQLite file at ``path`` (created on first use)."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_state_db(self.path, [_SCHEMA])
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    _SELECT = "SELECT issuer, sub, username, provider, bound_at FROM identity_bindings"
    _BY_IDENTITY = _SELECT + " WHERE issuer = ? AND sub = ?"
    _BY_USER_AND_ISSUER = _SELECT + " WHERE username = ? AND issuer = ?"
    _BY_USER = _SELECT + " WHERE username = ?"

    def _rows(self, query: str, args: tuple = ()) -> list[Binding]:
        return [Binding(*row) for row in self._conn().execute(query, args).fetchall()]

    def check(self, identity: Identity, username: str) -> None:
        """IdentityConflict, naming both sides, if this login disagrees with a binding."""
        for b in self._rows(self._BY_IDENTITY, (identity.issuer, identity.sub)):
            if b.username != username:
                raise IdentityConflict(
                    f"identity {identity.provider} {identity.sub!r} ({identity.issuer}) is bound to "
                    f"hub user {b.username!r}, but this login maps it to {username!r}; if XNAT's "
                    f"account was renamed or merged, release it with `xnat-oauth bindings release "
                    f"{b.username}`",
                    user_message=(
                        f"Your {identity.provider} identity is already the login of the hub account "
                        f"'{b.username}', but XNAT now names you '{username}'. One identity keeps one "
                        "account; please tell the hub's administrator."
                    ),
                )
        for b in self._rows(self._BY_USER_AND_ISSUER, (username, identity.issuer)):
            if b.sub != identity.sub:
                raise IdentityConflict(
                    f"hub user {username!r} is bound to subject {b.sub!r} of {identity.issuer}; "
                    f"subject {identity.sub!r} of the same issuer arrived at it (their claims render "
                    "to the same name): refused",
                    user_message=(
                        f"The hub account '{username}' belongs to another {identity.provider} "
                        "identity than yours, even though your details map to the same name. "
                        "Please tell the hub's administrator: the username pattern must tell you "
                        "apart (for example by using [sub])."
                    ),
                )

    def bind(self, identity: Identity, username: str) -> bool:
        """Record the binding after checking it; True if it is new. IdentityConflict otherwise."""
        # check and insert as one, against a concurrent login
        with write_transaction(self._conn()) as db:
            self.check(identity, username)
            cur = db.execute(
                "INSERT OR IGNORE INTO identity_bindings VALUES (?, ?, ?, ?, ?)",
                (identity.issuer, identity.sub, username, identity.provider, self._clock()),
            )
        return cur.rowcount == 1

    def of_user(self, username: str) -> list[Binding]:
        return self._rows(self._BY_USER, (username,))

    def all(self) -> list[Binding]:
        return self._rows(self._SELECT)

    def release(self, username: str) -> int:
        """Forget every binding of ``username`` (an admin's decision); how many there were."""
        return self._conn().execute("DELETE FROM identity_bindings WHERE username = ?", (username,)).rowcount
