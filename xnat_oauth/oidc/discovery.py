"""An OpenID provider as the hub sees it: its discovery document and its signing keys.

Both are fetched lazily, once, and shared by every login: concurrent first logins wait on one
fetch instead of sending one each. The key set is fetched again when a token names a key id it
does not hold (the provider rotated its keys), at most once per ``min_refresh_interval``: a
flood of tokens with made-up key ids costs the provider one request a minute, not one per
token. It is also fetched again once it is ``max_age`` old, so that a key the provider has
withdrawn (compromised, retired) stops being trusted within that time: each fetch replaces the
whole set. If that fetch fails, the old set serves for at most ``max_stale`` more (an outage of
the JWKS endpoint alone must not stop logins at once), then verification fails as unavailable.

All HTTP goes through an injected ``httpx.AsyncClient`` (timeouts, proxies and ``trust_env`` are
the caller's choice). An outage is a :class:`ProviderUnavailable`, never an
:class:`~.errors.IdTokenError`: the admin must be able to tell "IdP down" from "forged token".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Iterable, Literal, Mapping, TypeVar, overload
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey

from ..errors import ConfigError
from ..urls import LOOPBACK_HOSTS
from .errors import IdTokenError, IssuerMismatch, ProviderBadResponse, ProviderUnavailable

log = logging.getLogger("xnat_oauth.oidc")

#: the algorithms an ID token may be signed with, and the key type each needs
KEY_TYPES_BY_ALG: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
}

#: endpoint settings an admin may override after discovery (AAF's legacy /providers/op/* paths)
OVERRIDABLE_ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "jwks_uri",
)

T = TypeVar("T")


def check_provider_url(url: str, what: str) -> str:
    """``url`` if it is https (or http to this machine's loopback), else ConfigError.

    Plain http to any other host would let anyone on the path swap the provider's keys.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url
    raise ConfigError(f"{what} must be an https URL, got {url!r}")


class _SingleFlight(Generic[T]):
    """Run one coroutine at a time; callers arriving meanwhile share its result or error."""

    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        if self._task is None:
            task = asyncio.ensure_future(factory())
            self._task = task
            task.add_done_callback(self._done)
        # shield: one caller's cancellation (a closed browser tab) must not cancel the others' fetch
        return await asyncio.shield(self._task)

    async def join(self) -> T | None:
        """Wait for the running call, if any, and return its result."""
        if self._task is None:
            return None
        return await asyncio.shield(self._task)

    def _done(self, task: asyncio.Task[T]) -> None:
        self._task = None
        if not task.cancelled():
            # Mark the exception retrieved: if every waiter was cancelled, asyncio would otherwise
            # log "exception never retrieved" with a traceback for an ordinary outage.
            task.exception()


async def _get_json(http: httpx.AsyncClient, url: str, what: str) -> Any:
    """GET ``url`` and parse JSON; every failure is a ProviderUnavailable (or its bad-response kind)."""
    try:
        response = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as err:
        raise ProviderUnavailable(
            f"{what} at {url} unreachable: {type(err).__name__}", url=url
        ) from None
    if response.status_code != 200:
        cls = ProviderUnavailable if response.status_code >= 500 else ProviderBadResponse
        raise cls(
            f"{what} at {url} answered HTTP {response.status_code}",
            url=url,
            status=response.status_code,
        )
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProviderBadResponse(
            f"{what} at {url} is not JSON ({response.headers.get('content-type', 'no content type')})",
            url=url,
            status=response.status_code,
        ) from None


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of a discovery document (OIDC Discovery 1.0, section 3) the hub uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    claims_supported: tuple[str, ...] = ()
    end_session_endpoint: str | None = None
    #: the document as fetched, for anything not modelled above
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_document(
        cls,
        doc: Any,
        *,
        expected_issuer: str,
        url: str,
        overrides: Mapping[str, str] | None = None,
    ) -> "ProviderMetadata":
        """Validate a discovery document and apply the admin's endpoint overrides.

        IssuerMismatch if ``issuer`` is not ``expected_issuer`` exactly; ProviderBadResponse if the
        document is not an object or lacks an endpoint that no override supplies.
        """
        if not isinstance(doc, dict):
            raise ProviderBadResponse(f"discovery document at {url} is not a JSON object", url=url)
        if doc.get("issuer") != expected_issuer:
            raise IssuerMismatch(expected=expected_issuer, got=doc.get("issuer"), url=url)
        merged = {**doc, **(overrides or {})}

        @overload
        def url_field(name: str, required: Literal[True]) -> str: ...
        @overload
        def url_field(name: str, required: Literal[False]) -> str | None: ...
        def url_field(name: str, required: bool) -> str | None:
            value = merged.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ProviderBadResponse(
                    f"discovery document at {url} has no usable {name}", url=url
                )
            try:
                return check_provider_url(value, name)
            except ConfigError as err:
                raise ProviderBadResponse(f"discovery document at {url}: {err}", url=url) from None

        def str_list(name: str) -> tuple[str, ...]:
            value = doc.get(name)
            if isinstance(value, list):
                return tuple(v for v in value if isinstance(v, str))
            return ()

        return cls(
            issuer=expected_issuer,
            authorization_endpoint=url_field("authorization_endpoint", True),
            token_endpoint=url_field("token_endpoint", True),
            jwks_uri=url_field("jwks_uri", True),
            userinfo_endpoint=url_field("userinfo_endpoint", False),
            end_session_endpoint=url_field("end_session_endpoint", False),
            id_token_signing_alg_values_supported=str_list("id_token_signing_alg_values_supported"),
            code_challenge_methods_supported=str_list("code_challenge_methods_supported"),
            token_endpoint_auth_methods_supported=str_list("token_endpoint_auth_methods_supported"),
            scopes_supported=str_list("scopes_supported"),
            claims_supported=str_list("claims_supported"),
            raw=dict(doc),
        )


def _import_key_set(doc: Any, url: str) -> KeySet:
    """The RS256/ES256 signing keys of a JWKS document; keys of other kinds or uses are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ProviderBadResponse(f"JWKS at {url} is not a key set", url=url)
    keys: list[Key] = []
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kty = entry.get("kty")
        try:
            if kty == "RSA":
                keys.append(RSAKey.import_key(entry))
            elif kty == "EC" and entry.get("crv") == "P-256":
                keys.append(ECKey.import_key(entry))
        except (JoseError, ValueError, TypeError) as err:
            # One broken key must not take down logins signed with the good ones.
            log.warning("JWKS at %s: skipping an unusable %s key (%s)", url, kty, type(err).__name__)
    if not keys:
        raise ProviderBadResponse(f"JWKS at {url} holds no RS256 or ES256 signing key", url=url)
    return KeySet(keys)


def _select_key(key_set: KeySet, kid: str | None, alg: str) -> Key | None:
    """The key for a token header, None if the set has no such key.

    IdTokenError("alg") if the key exists but is of another type or algorithm than the header says:
    that is a token built to confuse, not a rotation, so no refresh is warranted.
    """
    kty, crv = KEY_TYPES_BY_ALG[alg]
    if kid is None:
        # OIDC Core 10.1: a kid may be left out only when the choice is unambiguous.
        candidates = [
            k for k in key_set.keys if k.key_type == kty and (crv is None or k.get("crv") == crv)
        ]
        return candidates[0] if len(candidates) == 1 else None
    matches = [k for k in key_set.keys if k.kid == kid]
    if not matches:
        return None
    for key in matches:
        if key.key_type == kty and (crv is None or key.get("crv") == crv):
            if key.get("alg") not in (None, alg):
                raise IdTokenError("alg", f"key {kid!r} is for {key.get('alg')}, token says {alg}")
            return key
    raise IdTokenError("alg", f"key {kid!r} is not a {kty} key, token says {alg}")


class JwksCache:
    """A provider's JSON Web Key Set: fetched once, refreshed on an unknown kid, bounded."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        jwks_uri: str,
        *,
        min_refresh_interval: float = 60.0,
        max_age: float = 900.0,
        max_stale: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.jwks_uri = check_provider_url(jwks_uri, "jwks_uri")
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max(float(max_age), float(min_refresh_interval))
        self.max_stale = self.max_age if max_stale is None else max(0.0, float(max_stale))
        self._http = http
        self._clock = clock
        self._key_set: KeySet | None = None
        #: when the key set now held was fetched (meaningful once ``_key_set`` is set)
        self._fetched_at: float = 0.0
        self._last_fetch: float | None = None
        self._flight: _SingleFlight[KeySet] = _SingleFlight()
        #: how many times the key set was requested from the provider
        self.fetch_count = 0

    async def get_key_set(self) -> KeySet:
        """The cached key set, fetched on first use (concurrent first callers share the fetch)
        and again once it is ``max_age`` old."""
        held = self._key_set
        if held is None:
            return await self._flight.run(self._fetch)
        if self._clock() - self._fetched_at < self.max_age:
            return held
        return await self._refetch_old(held)

    async def _refetch_old(self, held: KeySet) -> KeySet:
        age = self._clock() - self._fetched_at
        try:
            if not await self.refresh():
                # a fetch was tried moments ago and failed: do not hammer, serve while allowed
                raise ProviderUnavailable(f"JWKS at {self.jwks_uri} could not be fetched again", url=self.jwks_uri)
        except ProviderUnavailable as err:
            if age < self.max_age + self.max_stale:
                log.warning(
                    "JWKS at %s is %.0fs old and could not be fetched again (%s); using it a while longer",
                    self.jwks_uri,
                    age,
                    err,
                )
                return held
            raise ProviderUnavailable(
                f"JWKS at {self.jwks_uri} could not be fetched again for {age:.0f}s: {err}", url=self.jwks_uri
            ) from None
        return self._key_set or held

    async def refresh(self) -> bool:
        """Fetch the key set again unless that was done less than ``min_refresh_interval`` ago.

        Returns whether a fetch ran (or was joined). The interval counts from the start of the
        last fetch, successful or not, so an outage is not hammered either.
        """
        if self._flight.running:
            await self._flight.join()
            return True
        if self._last_fetch is not None and self._clock() - self._last_fetch < self.min_refresh_interval:
            return False
        await self._flight.run(self._fetch)
        return True

    async def find_key(self, kid: str | None, alg: str) -> Key:
        """The key that signed a token with this header: IdTokenError("unknown_key") if none.

        An unknown kid triggers one bounded refresh (the provider may have rotated its keys).
        """
        if alg not in KEY_TYPES_BY_ALG:
            raise IdTokenError("alg", f"algorithm {alg!r} is not allowed")
        key = _select_key(await self.get_key_set(), kid, alg)
        if key is None and await self.refresh() and self._key_set is not None:
            key = _select_key(self._key_set, kid, alg)
        if key is None:
            raise IdTokenError("unknown_key", f"no {alg} key with kid {kid!r} in {self.jwks_uri}")
        return key

    async def _fetch(self) -> KeySet:
        started = self._last_fetch = self._clock()
        self.fetch_count += 1
        doc = await _get_json(self._http, self.jwks_uri, "JWKS")
        # the whole set is replaced: a key the provider no longer publishes is no longer trusted
        self._key_set = _import_key_set(doc, self.jwks_uri)
        self._fetched_at = started
        return self._key_set


class OidcProvider:
    """One OpenID provider: its metadata (discovery, cached) and its keys (:class:`JwksCache`).

    ``issuer`` must be what the discovery document says, exactly; ``accepted_issuers`` lists the
    ``iss`` values ID tokens may carry (default: just ``issuer``; Google also signs
    ``accounts.google.com``). ``endpoint_overrides`` replace discovered endpoints by name
    (see :data:`OVERRIDABLE_ENDPOINTS`).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        issuer: str,
        *,
        accepted_issuers: Iterable[str] = (),
        discovery_url: str | None = None,
        endpoint_overrides: Mapping[str, str | None] | None = None,
        min_jwks_refresh_interval: float = 60.0,
        jwks_max_age: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.issuer = check_provider_url(issuer, "oidc issuer")
        self.accepted_issuers: tuple[str, ...] = tuple(
            dict.fromkeys([issuer, *accepted_issuers])
        )
        self.discovery_url = check_provider_url(
            discovery_url or issuer.rstrip("/") + "/.well-known/openid-configuration",
            "discovery URL",
        )
        overrides = {k: v for k, v in (endpoint_overrides or {}).items() if v}
        unknown = set(overrides) - set(OVERRIDABLE_ENDPOINTS)
        if unknown:
            raise ConfigError(
                f"unknown endpoint override(s) {sorted(unknown)}; "
                f"allowed: {list(OVERRIDABLE_ENDPOINTS)}"
            )
        for name, value in overrides.items():
            check_provider_url(value, name)
        self.endpoint_overrides: Mapping[str, str] = overrides
        self._http = http
        self._clock = clock
        self._min_jwks_refresh_interval = min_jwks_refresh_interval
        self._jwks_max_age = jwks_max_age
        self._metadata: ProviderMetadata | None = None
        self._flight: _SingleFlight[ProviderMetadata] = _SingleFlight()
        self._jwks: JwksCache | None = None
        #: how many times the discovery document was requested from the provider
        self.discovery_fetch_count = 0

    @classmethod
    def from_preset(cls, http: httpx.AsyncClient, preset, **kwargs) -> "OidcProvider":
        """A provider for a :class:`~.presets.ProviderPreset`; ``kwargs`` as for the constructor."""
        kwargs.setdefault("accepted_issuers", preset.accepted_issuers)
        kwargs.setdefault("discovery_url", preset.discovery_url)
        return cls(http, preset.issuer, **kwargs)

    async def metadata(self) -> ProviderMetadata:
        """The discovery document, fetched on first use and then cached for the hub's life."""
        if self._metadata is not None:
            return self._metadata
        return await self._flight.run(self._fetch_metadata)

    async def jwks(self) -> JwksCache:
        """The provider's key cache (needs the metadata for its URL)."""
        if self._jwks is None:
            metadata = await self.metadata()
            if self._jwks is None:
                self._jwks = JwksCache(
                    self._http,
                    metadata.jwks_uri,
                    min_refresh_interval=self._min_jwks_refresh_interval,
                    max_age=self._jwks_max_age,
                    clock=self._clock,
                )
        return self._jwks

    async def signing_key(self, kid: str | None, alg: str) -> Key:
        """The provider's key for a token header; see :meth:`JwksCache.find_key`."""
        return await (await self.jwks()).find_key(kid, alg)

    async def _fetch_metadata(self) -> ProviderMetadata:
        self.discovery_fetch_count += 1
        doc = await _get_json(self._http, self.discovery_url, "discovery document")
        self._metadata = ProviderMetadata.from_document(
            doc,
            expected_issuer=self.issuer,
            url=self.discovery_url,
            overrides=self.endpoint_overrides,
        )
        return self._metadata
