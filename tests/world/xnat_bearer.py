"""XNAT's OpenID plugin (NrgXnat/openid-auth-plugin 1.6.0) as the emulator reproduces it.

Kept apart from the HTTP server so the plugin's rules read in one place. Each rule names the
plugin (or XNAT) source file it follows; paths are relative to
``src/main/java/au/edu/qcif/xnat/auth/openid/`` of the plugin unless they say otherwise.

* The provider configuration is the plugin's ``openid.<providerId>.*`` properties, resolved like
  ``gate/GateConfig.java`` (a ``bearer.``-scoped key wins over the shared one).
* The Bearer path (``bearer/BearerTokenAuthenticationFilter.java``): route by the unverified
  ``iss``, verify (``bearer/BearerTokenValidator.java``: RS256/384/512 only, exact issuer,
  ``exp`` required, 60 s clock skew), then the claim gates (audience, on by default), the
  username pattern, the email-domain filter; the account is resolved by the emulator.
* The username pattern builds ``auth_user``, the key of XNAT's auth-mapping table
  (``xhbm_xdat_user_auth``), NOT the XNAT login (``OpenIdConnectUserDetails.java``). Only an
  account the plugin creates gets the login ``sanitize(auth_user)`` (``OpenIdUserResolver.java``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

#: BearerTokenValidator.ACCEPTED_ALGORITHMS; "none", HMAC and EC/EdDSA/PS are refused (401)
ALGORITHMS = ("RS256", "RS384", "RS512")
#: nimbus DefaultJWTClaimsVerifier's default, which BearerTokenValidator keeps (its comment says so)
CLOCK_SKEW = 60
#: OpenIdConnectUserDetails.DEFAULT_USERNAME_PATTERN, applied when the property is blank
DEFAULT_USERNAME_PATTERN = "[providerId]_[sub]"

# XNAT's login rule: NrgXnat/xnat libs/framework/.../utilities/Patterns.java EXPR_USERNAME
# "[a-zA-Z][A-Za-z0-9-_'.]{0,63}", matched whole by Users.isValidUsername (libs/xdat/.../helpers/Users.java).
XNAT_USERNAME = re.compile(r"[a-zA-Z][A-Za-z0-9\-_'.]{0,63}")
XNAT_USERNAME_RULE = "[a-zA-Z][A-Za-z0-9-_'.]{0,63}"
# OpenIdUserResolver.sanitizeUsername: everything outside this set becomes '_'
_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9\-_'.]")
# OpenIdConnectUserDetails.EXTRACTOR: what counts as a [placeholder]
_PLACEHOLDER = re.compile(r"\[([a-zA-Z0-9_.:/-]+)]")
# OpenIdConnectUserDetails.getFieldValue reads a *declared field* of that class before the claims.
# At pattern time (its constructor) these fields are still null, so the placeholder never resolves
# and the login is refused: email/firstName/lastName/username are set after the pattern, and on the
# Bearer path token and plugin are null too (BearerTokenAuthenticationFilter.buildUserDetails).
_NULL_FIELDS = frozenset({"email", "firstName", "lastName", "username", "token", "plugin"})
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_valid_xnat_username(name: object) -> bool:
    """``Users.isValidUsername``: a letter, then up to 63 of ``A-Za-z0-9-_'.``."""
    return isinstance(name, str) and XNAT_USERNAME.fullmatch(name) is not None


def sanitize_username(auth_user: str) -> str | None:
    """``OpenIdUserResolver.sanitizeUsername``: the login an auto-created account gets, or None
    when even the sanitised name breaks XNAT's rule (digit first, over 64 characters)."""
    # Java replaces per UTF-16 unit: a character beyond the BMP (two surrogates) becomes "__"
    login = _NOT_ALLOWED.sub(lambda m: "_" * (2 if ord(m.group()) > 0xFFFF else 1), auth_user)
    return login if is_valid_xnat_username(login) else None


class BearerRejected(Exception):
    """The token is refused; ``status`` is 401 (bad token) or 403 (valid token, failed gate)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _java_string(value) -> str:
    """``Object.toString()`` of a nimbus claim value, as BearerTokenAuthenticationFilter flattens them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_java_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_string(v)}" for k, v in value.items()) + "}"
    return str(value)


def auth_user_for(pattern: str | None, provider_id: str, claims: Mapping) -> str:
    """The ``auth_user`` the plugin derives from ``claims`` (``OpenIdConnectUserDetails.resolvePattern``).

    Raises ``ValueError`` where the plugin throws IllegalArgumentException: a placeholder whose
    claim is missing, blank or the string ``"null"``, or one of the field names the plugin can
    never resolve (``[email]``, ``[username]``, ``[firstName]``, ``[lastName]``). The result is
    NOT sanitised: it is the mapping key, and may hold characters no XNAT login can.
    """
    pattern = pattern if pattern and pattern.strip() else DEFAULT_USERNAME_PATTERN

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name == "providerId":  # the declared field providerId, set before the pattern runs
            return provider_id
        if name == "DEFAULT_USERNAME_PATTERN":  # a static String field of the class, read as such
            return DEFAULT_USERNAME_PATTERN
        if name in _NULL_FIELDS:
            raise ValueError(f"[{name}] is a field of OpenIdConnectUserDetails, null when the pattern is resolved")
        value = _java_string(claims.get(name)) if name in claims else "null"  # String.valueOf(null)
        if not value.strip() or value == "null":
            raise ValueError(f"the claim or field '{name}' was not found or blank")
        return value

    return _PLACEHOLDER.sub(fill, pattern)


# -- the plugin's configuration ------------------------------------------------------------------


def parse_properties(text: str) -> dict[str, str]:
    """A ``.properties`` file as ``java.util.Properties.load`` reads it (the subset sites write).

    Comments (``#``, ``!``), ``=``/``:``/whitespace separators, backslash line continuations and
    escapes. Like Java, leading whitespace of a value is dropped and TRAILING whitespace is KEPT
    (NRG's AAF sample has ``allowedEmailDomains=redboxresearchdata.com.au`` followed by two spaces).
    """
    props: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        # a line ending in an odd number of backslashes continues on the next one
        while (len(line) - len(line.rstrip("\\"))) % 2 == 1 and i < len(lines):
            line = line[:-1] + lines[i].lstrip(" \t\f")
            i += 1
        # java.util.Properties.load0: the key ends at an unescaped '=', ':' or whitespace; then
        # whitespace and at most one '=' or ':' are skipped
        key_chars: list[str] = []
        j, has_sep = 0, False
        while j < len(line):
            c = line[j]
            if c == "\\" and j + 1 < len(line):
                key_chars.append(line[j : j + 2])
                j += 2
                continue
            j += 1
            if c in "=:":
                has_sep = True
                break
            if c in " \t\f":
                break
            key_chars.append(c)
        while j < len(line) and line[j] in " \t\f=:":
            if line[j] in "=:":
                if has_sep:
                    break
                has_sep = True
            j += 1
        rest = line[j:]
        props[_unescape("".join(key_chars))] = _unescape(rest)
    return props


def _unescape(s: str) -> str:
    def one(m: re.Match) -> str:
        c = m.group(1)
        if c.startswith("u"):
            return chr(int(c[1:], 16))
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(c, c)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, s)


def _as_property(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass
class OpenIdProvider:
    """One provider's configuration: ``properties`` holds ``openid.<id>.*`` keys (without that
    prefix) and the provider attributes ``auto.enabled``/``auto.verified``, as strings."""

    provider_id: str
    properties: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.provider_id, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", self.provider_id):
            raise ValueError(f"invalid provider id {self.provider_id!r}")
        self.properties = {k: _as_property(v) for k, v in self.properties.items() if v is not None}
        uri = self.jwks_uri
        # the test world never sends a packet beyond loopback
        if uri is not None and urlsplit(uri).hostname not in _LOOPBACK:
            raise ValueError(f"openid.{self.provider_id}.jwksUri must be a loopback URL in the test world")
        for gate in ("roleCheck", "typCheck"):
            if self.gate_enabled(gate):
                # gate/RoleGate.java and gate/TypeGate.java are not reproduced: say so, never pretend
                raise ValueError(f"openid.{self.provider_id}.{gate} is not reproduced by the XNAT emulator")

    # OpenIdAuthPlugin.getProperty(providerId, name): openid.<providerId>.<name>, or null
    def prop(self, name: str) -> str | None:
        return self.properties.get(name)

    def _trimmed(self, name: str) -> str | None:  # StringUtils.trimToNull
        v = self.prop(name)
        return v.strip() or None if v is not None else None

    def path_value(self, name: str) -> str | None:
        """``GateConfig.value`` on the BEARER path: ``bearer.<name>`` if not blank, else ``<name>``."""
        scoped = self.prop(f"bearer.{name}")
        return scoped if scoped is not None and scoped.strip() else self.prop(name)

    def gate_enabled(self, gate: str) -> bool:
        """``GateConfig.enabled``; unset gates are off except ``audCheck`` on the Bearer path."""
        v = self.path_value(f"{gate}.enabled")
        if v is not None and v.strip():
            return _parse_boolean(v)
        return gate == "audCheck"

    @property
    def bearer_enabled(self) -> bool:
        return _parse_boolean(self.prop("bearer.enabled"))

    @property
    def issuer(self) -> str | None:
        return self._trimmed("issuer")

    @property
    def jwks_uri(self) -> str | None:
        return self._trimmed("jwksUri")

    @property
    def validator_issuer(self) -> str | None:
        """The issuer the token must carry: bearer/BearerTokenAuthenticationFilter.buildValidators
        passes the property UNtrimmed, while the resolver routes on the trimmed value, so an issuer
        with trailing whitespace routes the token and then fails every exact-match check (401)."""
        return self.prop("issuer")

    @property
    def jwks_uri_usable(self) -> bool:
        """buildValidators parses the untrimmed jwksUri with ``new URI``: whitespace in it leaves the
        provider without a validator, so every token is 401."""
        raw = self.prop("jwksUri")
        return raw is not None and raw == raw.strip() and " " not in raw

    @property
    def bearer_missing(self) -> list[str]:
        """The required settings a ``bearer.enabled`` provider lacks (BearerProviderResolver)."""
        return [f"openid.{self.provider_id}.{k}" for k in ("issuer", "jwksUri") if self._trimmed(k) is None]

    @property
    def on_bearer_path(self) -> bool:
        """``BearerProviderResolver``: bearer.enabled=true AND issuer AND jwksUri, else left off."""
        return self.bearer_enabled and not self.bearer_missing

    @property
    def username_pattern(self) -> str:
        v = self.prop("usernamePattern")
        return v if v is not None and v.strip() else DEFAULT_USERNAME_PATTERN

    @property
    def force_user_create(self) -> bool:
        """``bearer.forceUserCreate``, falling back to ``forceUserCreate`` (the filter's isForceUserCreate)."""
        return _parse_boolean(self.path_value("forceUserCreate"))

    @property
    def accepted_audiences(self) -> tuple[str, ...]:
        # ClaimGateFactory.commaSet: split on \s*,\s*, blanks dropped, no trimming of the ends
        v = self.path_value("audCheck.acceptedAudiences")
        if v is None or not v.strip():
            return ()
        return tuple(a for a in _java_split(r"\s*,\s*", v) if a.strip())

    @property
    def should_filter_email_domains(self) -> bool:
        # OpenIdAccountPolicy.shouldFilterEmailDomains (shared key only, not path-scoped)
        return _parse_boolean(self.prop("shouldFilterEmailDomains"))

    def email_domain_allowed(self, email: str | None) -> bool:
        """``OpenIdAccountPolicy.isEmailDomainAllowed``, called only when filtering is on."""
        if not self.should_filter_email_domains:
            return True
        configured = self.prop("allowedEmailDomains")
        if configured is None or not configured.strip():
            return True  # filtering on, no list: the policy falls back to open (and warns)
        allowed = [d.lower() for d in _java_split(r"\s*,\s*", configured)]
        if allowed == ["*"]:
            return True
        parts = _java_split("@", email or "")
        domain = parts[1] if len(parts) >= 2 else None
        if domain is None or not domain.strip():
            return False
        return domain.lower() in allowed

    def user_info(self, claims: Mapping, name: str) -> str:
        """``OpenIdConnectUserDetails.getUserInfo``: the claim named by ``openid.<p>.<name>``;
        an unset property names no claim, so the value is empty."""
        claim = self.prop(name)
        if claim is None:
            return ""
        value = claims.get(claim)
        return _java_string(value) if value is not None else ""

    @property
    def auto_enabled(self) -> bool:
        # ProviderAttributes (xnat-web security/provider): auto.enabled defaults to false
        return _parse_boolean(self.prop("auto.enabled"))

    @property
    def auto_verified(self) -> bool:
        return _parse_boolean(self.prop("auto.verified"))

    @property
    def link_source(self) -> str | None:
        """``OpenIdUserResolver.linkExistingIfConfigured`` on the Bearer path: the source provider, or None."""
        if not self.gate_enabled("linkExisting"):
            return None
        v = self.path_value("linkExisting.sourceProvider")
        return v.strip() or None if v is not None else None


def _parse_boolean(v: str | None) -> bool:
    # Boolean.parseBoolean: "true" in any case, NOT trimmed ("true " from a properties file is false)
    return v is not None and v.lower() == "true"


def _java_split(regex: str, s: str) -> list[str]:
    """``String.split``: trailing empty strings are dropped."""
    parts = re.split(regex, s)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def providers_from_properties(text_or_props: str | Mapping[str, object]) -> list[OpenIdProvider]:
    """The providers a ``*-provider.properties`` file defines (one ``provider.id`` per file in
    XNAT; its ``openid.<id>.*`` keys and ``auto.*`` attributes), as ``OpenIdAuthPlugin.setup`` reads them.

    A file may also carry ``openid.<other>.*`` keys: the plugin merges every file's properties, so
    those are returned as providers too (with no ``auto.*`` of their own).
    """
    props = parse_properties(text_or_props) if isinstance(text_or_props, str) else {
        k: _as_property(v) for k, v in text_or_props.items()
    }
    by_id: dict[str, dict[str, str]] = {}
    main = props.get("provider.id", "").strip() or None
    if main is not None:
        entry = by_id.setdefault(main, {})
        for attr in ("auto.enabled", "auto.verified"):
            if attr in props:
                entry[attr] = props[attr]
    for key, value in props.items():
        m = re.fullmatch(r"openid\.([^.]+)\.(.+)", key)
        if m:
            by_id.setdefault(m.group(1), {})[m.group(2)] = value
    return [OpenIdProvider(pid, p) for pid, p in by_id.items()]


# -- verifying a token ---------------------------------------------------------------------------


def _b64json(part: str):
    pad = "=" * (-len(part) % 4)
    try:
        raw = base64.urlsafe_b64decode(part + pad)
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BearerRejected(401, "malformed bearer token") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_unverified(token: str) -> tuple[dict, dict]:
    """``SignedJWT.parse`` + ``getJWTClaimsSet``: header and claims, before any check.

    A JWE (five parts), an unsecured JWT (``alg: none`` is no JWS algorithm), non-JSON parts and
    registered claims of the wrong type all fail here: 401 "malformed bearer token".
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise BearerRejected(401, "malformed bearer token")
    header, claims = _b64json(parts[0]), _b64json(parts[1])
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise BearerRejected(401, "malformed bearer token")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise BearerRejected(401, "malformed bearer token")
    # nimbus JWTClaimsSet.parse types the registered claims; anything else is a ParseException
    for name in ("iss", "sub", "jti"):
        if name in claims and claims[name] is not None and not isinstance(claims[name], str):
            raise BearerRejected(401, "malformed bearer token")
    aud = claims.get("aud")
    if aud is not None and not isinstance(aud, str) and not (
        isinstance(aud, list) and all(isinstance(a, str) for a in aud)
    ):
        raise BearerRejected(401, "malformed bearer token")
    for name in ("exp", "nbf", "iat"):
        if name in claims and claims[name] is not None and not _is_number(claims[name]):
            raise BearerRejected(401, "malformed bearer token")
    return header, claims


class BearerVerifier:
    """``BearerTokenValidator``: one cached JWKS per provider, refetched once on an unknown key.

    Used from the emulator's event loop only, so the cache needs no lock.
    """

    def __init__(self, *, fetch_timeout: float = 5.0):
        self._keys: dict[str, list[dict]] = {}
        self._timeout = fetch_timeout
        #: JWKS fetches per provider id, for tests of the cache
        self.fetches: dict[str, int] = {}

    def forget(self, provider_id: str | None = None):
        if provider_id is None:
            self._keys.clear()
        else:
            self._keys.pop(provider_id, None)

    async def _fetch(self, provider: OpenIdProvider) -> list[dict]:
        self.fetches[provider.provider_id] = self.fetches.get(provider.provider_id, 0) + 1
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=self._timeout) as c:
                r = await c.get(provider.jwks_uri)
                r.raise_for_status()
                doc = r.json()
            keys = [k for k in doc["keys"] if isinstance(k, dict)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            # nimbus: a key source failure is a JOSEException, so a bad token (401); fail closed
            raise BearerRejected(401, f"invalid bearer token (JWKS unavailable: {type(e).__name__})") from None
        self._keys[provider.provider_id] = keys
        return keys

    @staticmethod
    def _candidates(keys: list[dict], header: dict) -> list[dict]:
        # nimbus JWSVerificationKeySelector -> JWKMatcher.forJWSHeader: key type of the alg, the
        # header's kid (if any), use "sig" or none, alg equal to the header's or none
        kid, alg = header.get("kid"), header.get("alg")
        return [
            k for k in keys
            if k.get("kty") == "RSA"
            and (kid is None or k.get("kid") == kid)
            and k.get("use") in (None, "sig")
            and k.get("alg") in (None, alg)
        ]

    async def _matching_keys(self, provider: OpenIdProvider, header: dict) -> list[dict]:
        keys = self._keys.get(provider.provider_id)
        if keys is None:
            keys = await self._fetch(provider)
        found = self._candidates(keys, header)
        if not found:  # key rotation at the provider (nimbus refreshes on a miss)
            found = self._candidates(await self._fetch(provider), header)
        return found

    async def verify(self, token: str, providers: Iterable[OpenIdProvider], now: float) -> tuple[OpenIdProvider, dict]:
        """Return (provider, verified claims) or raise :class:`BearerRejected` (401)."""
        header, claims = parse_unverified(token)
        iss = claims.get("iss")
        # BearerProviderResolver: issuer -> provider id, first configured wins; providers missing
        # issuer or jwksUri are not in the map at all
        provider = next((p for p in providers if p.on_bearer_path and iss and p.issuer == iss), None)
        if provider is None:
            raise BearerRejected(401, "bearer token issuer is not configured")
        if not provider.jwks_uri_usable:
            raise BearerRejected(401, "bearer token issuer is not configured (no validator: malformed jwksUri)")
        alg = header["alg"]
        if alg not in ALGORITHMS:
            raise BearerRejected(401, f"invalid bearer token (JWS algorithm {alg} not accepted)")
        # nimbus DefaultJWTProcessor's default type verifier: typ absent or "JWT" (so "at+jwt"
        # access tokens of RFC 9068 providers are refused); BearerTokenValidator does not change it
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() != "jwt"):
            raise BearerRejected(401, f"invalid bearer token (JOSE header typ {typ!r} not allowed)")
        verified = False
        for k in await self._matching_keys(provider, header):
            try:
                key = RSAKey.import_key({n: v for n, v in k.items() if n in ("kty", "n", "e")})
                jws.deserialize_compact(token, key, algorithms=[alg])
            except (JoseError, ValueError, TypeError):
                continue
            verified = True
            break
        if not verified:
            raise BearerRejected(401, "invalid bearer token (signature)")
        # DefaultJWTClaimsVerifier(exact iss, required {exp}), 60 s skew, times in whole seconds
        if claims.get("iss") != provider.validator_issuer:
            raise BearerRejected(401, "invalid bearer token (iss)")
        exp = claims.get("exp")
        if exp is None:
            raise BearerRejected(401, "invalid bearer token (exp missing)")
        now_ms = int(now * 1000)
        if not int(exp) * 1000 + CLOCK_SKEW * 1000 > now_ms:
            raise BearerRejected(401, "invalid bearer token (expired)")
        nbf = claims.get("nbf")
        if nbf is not None and not int(nbf) * 1000 - CLOCK_SKEW * 1000 < now_ms:
            raise BearerRejected(401, "invalid bearer token (before use time)")
        return provider, claims


@dataclass(frozen=True)
class BearerIdentity:
    """What the filter knows after the claim gates: the mapping key and the profile claims."""

    provider: OpenIdProvider
    auth_user: str
    email: str
    first_name: str
    last_name: str


def bearer_identity(provider: OpenIdProvider, claims: Mapping) -> BearerIdentity:
    """The claim gates, the pattern and the email-domain filter, in the filter's order (403s)."""
    # gate/ClaimGateFactory + gate/AudienceGate: the audience gate is on by default on this path
    if provider.gate_enabled("audCheck"):
        accepted = set(provider.accepted_audiences)
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else None
        if auds is None or not accepted.intersection(auds):
            raise BearerRejected(
                403, f"Token audience {auds} does not contain any accepted audience {sorted(accepted)}"
            )
    if provider.gate_enabled("roleCheck") or provider.gate_enabled("typCheck"):
        # gate/RoleGate.java, gate/TypeGate.java: not reproduced; refuse rather than pretend
        raise BearerRejected(403, "roleCheck/typCheck gates are not reproduced by the emulator")
    try:
        auth_user = auth_user_for(provider.username_pattern, provider.provider_id, claims)
    except ValueError as e:
        raise BearerRejected(403, f"could not resolve an XNAT identity from the token ({e})") from None
    email = provider.user_info(claims, "emailProperty")
    if provider.should_filter_email_domains and not provider.email_domain_allowed(email):
        raise BearerRejected(403, "the email domain for this identity is not permitted")
    return BearerIdentity(
        provider,
        auth_user,
        email,
        provider.user_info(claims, "givenNameProperty"),
        provider.user_info(claims, "familyNameProperty"),
    )
