"""A token per server: every notebook server holds an XNAT alias token of its own.

The user's login token (``auth_state["xnat"]["token"]``) never leaves the hub. A server started
from the hub gets a token minted for it (XNAT's ``GET /data/services/tokens/issue``, authenticated
with the login token: XNAT's ``AliasTokenRestlet`` issues a new token of the caller, whoever
authenticated how), so logging out of the hub or refreshing the login, which end the login token,
leave running servers working, and two servers never share a token. A server XNAT launched keeps
the token XNAT minted for that launch; the hub records it the same way, so it can renew it and
end it.

Where the tokens live: a table in the hub's own state file (``xnat_state_file``, the SQLite file
of :mod:`xnat_oauth.identity_bindings`), the secret encrypted with JupyterHub's
``jupyterhub.crypto`` (``JUPYTERHUB_CRYPT_KEY``, as auth_state). Not auth_state itself: a user's
auth_state is replaced at each login and refresh and emptied at logout, while a server's token
must outlive all three; not the spawner's state: spawners that keep none (local processes) would
lose the token at a hub restart, and the hub must still end it when the server stops after one.

Two tables:

* ``xnat_servers``: one row per running server (user, server name) with its start time (the
  renewal limit counts from it) and a SHA-256 of its ``JUPYTERHUB_API_TOKEN`` (how the renewal
  endpoint knows which server is asking: JupyterHub stores only its own salted hash);
* ``xnat_server_tokens``: the server's tokens: the current one, and replaced ones the hub has
  yet to invalidate (``retiring``: XNAT was unreachable at the time). A token leaves the table
  once XNAT has invalidated it, refuses it, or it has expired anyway.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.crypto import CryptKeeper

from .auth_state import XnatToken
from .errors import XnatAuthError, XnatError, XnatNotFound, XnatUnavailable
from .sqlite_store import open_state_db, write_transaction
from .xnat_client import XnatClient

log = logging.getLogger("xnat_oauth.server_tokens")

#: the default of ``XnatOAuthenticator.xnat_state_file``: used when the hooks run beside another
#: authenticator (the hub's working directory, where jupyterhub.sqlite lives)
DEFAULT_STATE_FILE = "xnat-oauth.sqlite"
#: retiring tokens whose expiry is unknown (XNAT's launch tokens) are dropped after this long
UNKNOWN_EXPIRY_KEEP = 30 * 86400.0
#: how many retiring tokens one clean-up tries at most (a long XNAT outage must not make a stop slow)
MAX_RETRIES_PER_SWEEP = 20

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS xnat_servers (
        username TEXT NOT NULL,
        server TEXT NOT NULL,
        url TEXT NOT NULL,
        started_at REAL NOT NULL,
        api_token_sha256 TEXT,
        last_issue REAL NOT NULL,
        PRIMARY KEY (username, server)
    )
    """,
    "CREATE INDEX IF NOT EXISTS xnat_servers_api_token ON xnat_servers (api_token_sha256)",
    """
    CREATE TABLE IF NOT EXISTS xnat_server_tokens (
        alias TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        server TEXT NOT NULL,
        url TEXT NOT NULL,
        secret BLOB NOT NULL,
        expires_at REAL,
        issued_at REAL NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS xnat_server_tokens_server ON xnat_server_tokens (username, server)",
)

CURRENT = "current"
RETIRING = "retiring"
#: where a server's token came from: minted by the hub at spawn, minted by the hub at a renewal,
#: or minted by XNAT for its launch
ORIGINS = ("hub", "renewal", "xnat")


def api_token_sha256(api_token: str | None) -> str | None:
    """The digest the store keeps of a server's ``JUPYTERHUB_API_TOKEN`` (random, 32 bytes:
    a plain hash cannot be reversed)."""
    if not api_token:
        return None
    return hashlib.sha256(api_token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ServerRecord:
    username: str
    server: str
    url: str
    started_at: float
    api_token_sha256: str | None
    last_issue: float


@dataclass(frozen=True)
class ServerToken:
    """One token of one server, decrypted. ``expires_at`` None: unknown (XNAT's launch token)."""

    username: str
    server: str
    url: str
    token: XnatToken
    known_expiry: bool
    issued_at: float
    origin: str
    state: str

    @property
    def alias(self) -> str:
        return self.token.alias


class ServerTokenStore:
    """The two tables in the SQLite file at ``path``; secrets go through ``keeper`` (JupyterHub's
    CryptKeeper, ``JUPYTERHUB_CRYPT_KEY``; the process-wide one unless given)."""

    def __init__(self, path: str | Path, *, keeper: CryptKeeper | None = None, clock=time.time):
        self.path = Path(path)
        self._keeper = keeper
        self.clock = clock
        self._db: sqlite3.Connection | None = None

    @property
    def keeper(self) -> CryptKeeper:
        return self._keeper or CryptKeeper.instance()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_state_db(self.path, _SCHEMA)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- encryption ------------------------------------------------------------------------

    async def _seal(self, token: XnatToken) -> bytes:
        return await self.keeper.encrypt({"secret": token.secret})

    async def _open(self, row) -> ServerToken | None:
        """The row decrypted; None (logged) when the crypt key cannot read it (a key removed
        from ``JUPYTERHUB_CRYPT_KEY``): nobody can use that token any more, the hub included."""
        alias, username, server, url, sealed, expires_at, issued_at, origin, state = row
        try:
            secret = (await self.keeper.decrypt(bytes(sealed)))["secret"]
        except Exception as e:  # noqa: BLE001 - InvalidToken, EncryptionUnavailable, a broken row
            log.warning("cannot decrypt server token %s of %s (%s): left to expire", alias, username,
                        type(e).__name__)
            return None
        known = expires_at is not None
        token = XnatToken(alias=alias, secret=secret, expires_at=float(expires_at) if known else 0.0)
        return ServerToken(username, server, url, token, known, float(issued_at), origin, state)

    # -- servers ---------------------------------------------------------------------------

    _SERVER = "SELECT username, server, url, started_at, api_token_sha256, last_issue FROM xnat_servers"

    def server(self, username: str, server: str) -> ServerRecord | None:
        row = self._conn().execute(self._SERVER + " WHERE username = ? AND server = ?", (username, server)).fetchone()
        return ServerRecord(*row) if row else None

    def server_by_api_token(self, api_token: str) -> ServerRecord | None:
        digest = api_token_sha256(api_token)
        if digest is None:
            return None
        row = self._conn().execute(self._SERVER + " WHERE api_token_sha256 = ?", (digest,)).fetchone()
        return ServerRecord(*row) if row else None

    def servers(self) -> list[ServerRecord]:
        return [ServerRecord(*r) for r in self._conn().execute(self._SERVER).fetchall()]

    # -- tokens ----------------------------------------------------------------------------

    _SELECT_TOKENS = (
        "SELECT alias, username, server, url, secret, expires_at, issued_at, origin, state FROM xnat_server_tokens"
    )

    async def start_server(
        self,
        username: str,
        server: str,
        *,
        url: str,
        api_token: str | None,
        token: XnatToken | None,
        known_expiry: bool = True,
        origin: str = "hub",
    ) -> list[ServerToken]:
        """Record a server at its start, with the token it gets (None: XNAT gave it none).

        Tokens of an earlier run of the same server still in the table (XNAT was down when it
        stopped) become retiring; they are returned for the caller to invalidate.
        """
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}")
        sealed = await self._seal(token) if token is not None else None
        now = self.clock()
        with write_transaction(self._conn()) as db:
            db.execute(
                "UPDATE xnat_server_tokens SET state = ? WHERE username = ? AND server = ?",
                (RETIRING, username, server),
            )
            db.execute(
                "INSERT OR REPLACE INTO xnat_servers VALUES (?, ?, ?, ?, ?, ?)",
                (username, server, url, now, api_token_sha256(api_token), now),
            )
            if token is not None:
                self._insert(db, username, server, url, token, sealed, known_expiry, now, origin)
        return await self.retiring(username, server)

    @staticmethod
    def _insert(db, username, server, url, token: XnatToken, sealed, known_expiry, now, origin) -> None:
        db.execute(
            "INSERT OR REPLACE INTO xnat_server_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (token.alias, username, server, url, sealed, token.expires_at if known_expiry else None, now, origin,
             CURRENT),
        )

    async def replace_token(self, username: str, server: str, token: XnatToken) -> list[ServerToken]:
        """A renewal: ``token`` becomes the server's current token, stored before it is
        delivered; the one it replaces becomes retiring and is returned (invalidate it once the
        new one is delivered). KeyError if the server is not recorded (it stopped meanwhile)."""
        sealed = await self._seal(token)
        now = self.clock()
        with write_transaction(self._conn()) as db:
            rec = db.execute(
                "SELECT url FROM xnat_servers WHERE username = ? AND server = ?", (username, server)
            ).fetchone()
            if rec is None:
                raise KeyError(f"{username}/{server}")
            replaced = db.execute(
                "SELECT alias FROM xnat_server_tokens WHERE username = ? AND server = ? AND state = ?",
                (username, server, CURRENT),
            ).fetchall()
            db.execute(
                "UPDATE xnat_server_tokens SET state = ? WHERE username = ? AND server = ?",
                (RETIRING, username, server),
            )
            self._insert(db, username, server, rec[0], token, sealed, True, now, "renewal")
            db.execute(
                "UPDATE xnat_servers SET last_issue = ? WHERE username = ? AND server = ?", (now, username, server)
            )
        aliases = {a for (a,) in replaced}
        return [t for t in await self.retiring(username, server) if t.alias in aliases]

    async def current(self, username: str, server: str) -> ServerToken | None:
        row = self._conn().execute(
            self._SELECT_TOKENS + " WHERE username = ? AND server = ? AND state = ? ORDER BY issued_at DESC",
            (username, server, CURRENT),
        ).fetchone()
        return await self._open(row) if row else None

    async def retiring(self, username: str | None = None, server: str | None = None) -> list[ServerToken]:
        query, args = self._SELECT_TOKENS + " WHERE state = ?", [RETIRING]
        if username is not None:
            query += " AND username = ?"
            args.append(username)
        if server is not None:
            query += " AND server = ?"
            args.append(server)
        rows = self._conn().execute(query + " ORDER BY issued_at", args).fetchall()
        opened = [await self._open(r) for r in rows]
        return [t for t in opened if t is not None]

    async def stop_server(self, username: str, server: str) -> list[ServerToken]:
        """The server stopped: forget it and return its tokens, all retiring now."""
        with write_transaction(self._conn()) as db:
            db.execute(
                "UPDATE xnat_server_tokens SET state = ? WHERE username = ? AND server = ?",
                (RETIRING, username, server),
            )
            db.execute("DELETE FROM xnat_servers WHERE username = ? AND server = ?", (username, server))
        return await self.retiring(username, server)

    def forget(self, alias: str) -> None:
        """The token is gone in XNAT (invalidated, refused, expired)."""
        self._conn().execute("DELETE FROM xnat_server_tokens WHERE alias = ? AND state = ?", (alias, RETIRING))

    def prune(self) -> int:
        """Drop retiring tokens that expired anyway (XNAT purges them itself); how many."""
        now = self.clock()
        cur = self._conn().execute(
            "DELETE FROM xnat_server_tokens WHERE state = ? AND "
            "((expires_at IS NOT NULL AND expires_at < ?) OR (expires_at IS NULL AND issued_at < ?))",
            (RETIRING, now, now - UNKNOWN_EXPIRY_KEEP),
        )
        return cur.rowcount


_STORES: dict[Path, ServerTokenStore] = {}


def store_for(authenticator: Any) -> ServerTokenStore:
    """The hub's store: in the authenticator's ``xnat_state_file`` (XnatOAuthenticator), or in
    ``xnat-oauth.sqlite`` in the hub's working directory beside any other authenticator.
    One per file for the hub's process; an object may carry its own ``server_token_store``."""
    own = getattr(authenticator, "server_token_store", None)
    if isinstance(own, ServerTokenStore):
        return own
    path = Path(getattr(authenticator, "xnat_state_file", None) or DEFAULT_STATE_FILE).resolve()
    store = _STORES.get(path)
    if store is None:
        store = _STORES[path] = ServerTokenStore(path)
    return store


# -- XNAT ------------------------------------------------------------------------------------


class ServerTokenRefused(XnatAuthError):
    """XNAT would not mint a server's token with the user's login token (expired, invalidated):
    for the user, the XNAT session is over."""


async def mint(client: XnatClient, login_token: XnatToken, username: str) -> XnatToken:
    """A new token of ``username``, minted with the user's login token.

    Never retried (a GET that mints). The new token must be the user's own: XNAT names its owner
    (``xdatUserId``, else who-am-I with the new token); any other answer invalidates it again.
    XnatUnavailable when XNAT cannot answer, ServerTokenRefused when it refuses the login token.
    """
    try:
        issued = await client.issue_token(login_token)
    except (XnatAuthError, XnatNotFound) as e:
        raise ServerTokenRefused(f"XNAT refused the login token of {username}: {e}") from None
    except XnatUnavailable:
        raise
    except XnatError as e:
        raise ServerTokenRefused(f"XNAT would not issue a token for {username}: {e}") from None
    token = issued.as_token()
    try:
        owner = issued.username or await client.whoami(token)
    except BaseException:
        await discard(client, token)
        raise
    if owner != username:
        await discard(client, token)
        raise ServerTokenRefused(f"XNAT issued a token of {owner!r}, not of {username!r}")
    return token


async def discard(client: XnatClient, token: XnatToken) -> None:
    """Invalidate a token nobody will hold (best effort: it expires on its own anyway)."""
    try:
        await client.invalidate_token(token)
    except Exception as e:  # noqa: BLE001 - best effort: the token expires on its own anyway
        log.warning("could not invalidate an unused XNAT token (alias %s): %s", token.alias, e)


async def invalidate(store: ServerTokenStore, client: XnatClient, tokens: list[ServerToken]) -> int:
    """End ``tokens`` in XNAT, each authenticated as itself (so after logout too); how many ended.

    A token XNAT no longer accepts (401) or knows (404) is gone already. One XNAT could not
    answer for stays retiring, tried again at the user's next server stop, spawn or renewal, until
    it expires. A token is sent only to the XNAT that issued it (``client.url``).
    """
    store.prune()
    ended = 0
    for st in tokens[:MAX_RETRIES_PER_SWEEP]:
        if st.state != RETIRING:
            continue
        if st.url.rstrip("/") != client.url.rstrip("/"):
            log.warning("server token %s of %s was issued by another XNAT (%s): not sent to %s",
                        st.alias, st.username, st.url, client.url)
            continue
        try:
            await client.invalidate_token(st.token)
        except (XnatAuthError, XnatNotFound):
            pass  # expired, or invalidated in XNAT already
        except XnatError as e:
            log.warning("could not invalidate server token %s of %s (%s); will retry", st.alias, st.username, e)
            continue
        store.forget(st.alias)
        ended += 1
    return ended


async def release(store: ServerTokenStore, client: XnatClient, username: str, server: str) -> int:
    """A server stopped: end its tokens (and any of the user's left over from an outage)."""
    tokens = await store.stop_server(username, server)
    others = [t for t in await store.retiring(username) if t.server != server]
    ended = await invalidate(store, client, tokens + others)
    if tokens:
        log.info("ended %d XNAT token(s) of %s's server %r", ended, username, server)
    return ended
