"""The ``auth_state["xnat"]`` schema: what a login stores for the spawn hooks.

JupyterHub encrypts ``auth_state`` with ``JUPYTERHUB_CRYPT_KEY``. Every login path (XNAT
password, OpenID Connect with Bearer exchange, OpenID Connect without) writes the same
versioned record, and the spawn hooks read only this record::

    auth_state["xnat"] = {
        "version": 1,
        "url": "https://xnat.example.org",      # XNAT base URL the token is valid for
        "username": "aaf_YAdr3eQ...",           # XNAT's own spelling, case preserved
        "source": "password" | "bearer" | "none",
        "token": {                              # the user's own XNAT alias token, or None
            "alias": "61e4f5db-...",            #   (None only with source "none")
            "secret": "<64 chars>",
            "expires_at": 1526532504,           #   epoch seconds (XNAT gives ms)
        },
        "jupyter": True,                        # XNAT's Jupyter permission at login (if asked)
        "identity": {                           # OpenID logins only
            "provider": "aaf", "issuer": "https://central.aaf.edu.au", "sub": "YAdr3eQ...",
            "auth_user": "aaf_YAdr3eQ...",      # the pattern's rendering: XNAT's mapping key
        },
    }

Why a dataclass and not a plain dict: a record from an older version, another login path or
a hand-edited database must be rejected loudly (:class:`AuthStateError`) instead of crashing
deep inside a spawner. ``from_auth_state`` is the only reader; ``to_dict`` the only writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import XnatOAuthError

AUTH_STATE_KEY = "xnat"
SCHEMA_VERSION = 1
SOURCES = ("password", "bearer", "none")


class AuthStateError(XnatOAuthError):
    """auth_state has no usable XNAT record; the user must log in again."""

    status_code = 403
    user_message = "Your XNAT session is missing or out of date. Please log out and log in again."


@dataclass(frozen=True)
class XnatToken:
    alias: str
    secret: str = field(repr=False)  # never in logs or tracebacks
    expires_at: float  # epoch seconds

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def is_valid_for(self, seconds: float, now: float | None = None) -> bool:
        """True when the token is still valid ``seconds`` from now."""
        return self.expires_in(now) > seconds

    def to_dict(self) -> dict:
        return {"alias": self.alias, "secret": self.secret, "expires_at": self.expires_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "XnatToken":
        try:
            alias, secret, exp = d["alias"], d["secret"], d["expires_at"]
        except (KeyError, TypeError) as e:
            raise AuthStateError(f"auth_state token lacks {e}") from None
        if not (isinstance(alias, str) and alias and isinstance(secret, str) and secret):
            raise AuthStateError("auth_state token alias/secret must be non-empty strings")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise AuthStateError("auth_state token expires_at must be a number")
        return cls(alias=alias, secret=secret, expires_at=float(exp))


@dataclass(frozen=True)
class Identity:
    provider: str
    issuer: str
    sub: str
    #: the username pattern's rendering: the key of XNAT's auth mapping (the plugin's
    #: ``auth_user``, unsanitised); sanitised, it is the login of accounts the plugin created
    auth_user: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(issuer, sub): the only stable identifier of a person at a provider."""
        return (self.issuer, self.sub)

    def to_dict(self) -> dict:
        d = {"provider": self.provider, "issuer": self.issuer, "sub": self.sub}
        if self.auth_user is not None:
            d["auth_user"] = self.auth_user
        return d


@dataclass(frozen=True)
class XnatAuthState:
    url: str
    username: str
    source: str
    token: XnatToken | None
    identity: Identity | None = None
    #: whether XNAT allows this user Jupyter, as asked at login; None when not asked
    jupyter: bool | None = None
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.source not in SOURCES:
            raise AuthStateError(f"unknown auth_state source {self.source!r}")
        if self.token is None and self.source != "none":
            raise AuthStateError(f"auth_state source {self.source!r} needs a token")

    def to_dict(self) -> dict:
        d = {
            "version": self.version,
            "url": self.url,
            "username": self.username,
            "source": self.source,
            "token": self.token.to_dict() if self.token else None,
        }
        if self.identity is not None:
            d["identity"] = self.identity.to_dict()
        if self.jupyter is not None:
            d["jupyter"] = self.jupyter
        return d

    def into(self, auth_state: dict | None) -> dict:
        """Return ``auth_state`` (or a new dict) with this record under ``"xnat"``."""
        out = dict(auth_state or {})
        out[AUTH_STATE_KEY] = self.to_dict()
        return out

    @classmethod
    def from_auth_state(cls, auth_state: Mapping[str, Any] | None) -> "XnatAuthState":
        """Read the record from a whole auth_state; raise AuthStateError when unusable."""
        if not auth_state or AUTH_STATE_KEY not in auth_state:
            raise AuthStateError("auth_state has no XNAT record")
        d = auth_state[AUTH_STATE_KEY]
        if not isinstance(d, Mapping):
            raise AuthStateError("auth_state XNAT record is not a mapping")
        if d.get("version") != SCHEMA_VERSION:
            raise AuthStateError(f"auth_state XNAT record has version {d.get('version')!r}")
        try:
            url, username, source = d["url"], d["username"], d["source"]
        except KeyError as e:
            raise AuthStateError(f"auth_state XNAT record lacks {e}") from None
        if not (isinstance(url, str) and isinstance(username, str) and username):
            raise AuthStateError("auth_state XNAT url/username must be strings")
        tok = d.get("token")
        ident = d.get("identity")
        identity = None
        if ident is not None:
            try:
                auth_user = ident.get("auth_user")
                identity = Identity(
                    str(ident["provider"]),
                    str(ident["issuer"]),
                    str(ident["sub"]),
                    str(auth_user) if auth_user is not None else None,
                )
            except (KeyError, TypeError, AttributeError) as e:
                raise AuthStateError(f"auth_state identity lacks {e}") from None
        jupyter = d.get("jupyter")
        if jupyter is not None and not isinstance(jupyter, bool):
            raise AuthStateError("auth_state XNAT record: jupyter must be true, false or absent")
        return cls(
            url=url,
            username=username,
            source=source,
            token=XnatToken.from_dict(tok) if tok is not None else None,
            identity=identity,
            jupyter=jupyter,
        )

    @classmethod
    def maybe_from_auth_state(cls, auth_state) -> "XnatAuthState | None":
        """Like from_auth_state, but None instead of raising (for refresh paths)."""
        try:
            return cls.from_auth_state(auth_state)
        except AuthStateError:
            return None
