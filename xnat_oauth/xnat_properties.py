"""XNAT's OpenID plugin settings (``openid-provider.properties``), read as XNAT reads them.

So hub and XNAT cannot drift, the hub can take its providers' ids, issuers, JWKS URLs and
username patterns from the very file XNAT's OpenID plugin loads (the plugin reads it with
``java.util.Properties``, whose rules :func:`parse_properties` follows: ``#``/``!`` comments,
``=``/``:``/whitespace separators, backslash line continuations and escapes, and trailing
whitespace kept in values, which is how a stray space after ``issuer=`` makes XNAT refuse every
token). The hub's own client registrations stay the hub's: XNAT's ``clientId`` is XNAT's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _logical_lines(text: str):
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")  # a continuation's leading whitespace goes too
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:  # an odd number of backslashes continues the line
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\" or i + 1 == len(s):
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "u" and i + 6 <= len(s):
            try:
                out.append(chr(int(s[i + 2 : i + 6], 16)))
                i += 6
                continue
            except ValueError:
                raise ConfigError(f"malformed \\uxxxx escape in {s!r}") from None
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """A ``.properties`` text as ``java.util.Properties.load`` reads it (later keys win)."""
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        i, key_end = 0, None
        while i < len(line):
            c = line[i]
            if c == "\\":
                i += 2
                continue
            if c in "=: \t\f":
                key_end = i
                break
            i += 1
        if key_end is None:
            props[_unescape(line)] = ""
            continue
        key, sep = line[:key_end], line[key_end]
        if sep in "=:":
            rest = line[key_end + 1 :]
        else:  # whitespace ends the key; one '=' or ':' may still follow it
            rest = line[key_end:].lstrip(" \t\f")
            if rest[:1] in ("=", ":"):
                rest = rest[1:]
        props[_unescape(key)] = _unescape(rest.lstrip(" \t\f"))
    return props


@dataclass(frozen=True)
class XnatProvider:
    """What XNAT's OpenID plugin says of one provider (``openid.<id>.*``)."""

    id: str
    issuer: str = ""
    jwks_uri: str = ""
    username_pattern: str = ""
    bearer_enabled: bool = False
    accepted_audiences: tuple[str, ...] = ()
    force_user_create: bool = False
    bearer_force_user_create: bool = False
    allowed_email_domains: tuple[str, ...] = ()
    raw: dict[str, str] = field(default_factory=dict, repr=False)


def _bool(value: str) -> bool:
    return value.strip().lower() == "true"  # Boolean.parseBoolean


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def xnat_providers(props: dict[str, str]) -> list[XnatProvider]:
    """The providers ``openid.providers`` lists, in its order, with their settings."""
    out = []
    for pid in _list(props.get("openid.providers", "")):
        prefix = f"openid.{pid}."
        own = {k[len(prefix) :]: v for k, v in props.items() if k.startswith(prefix)}
        bearer_create = own.get("bearer.forceUserCreate")
        out.append(
            XnatProvider(
                id=pid,
                # values as XNAT holds them: trailing whitespace included (it breaks XNAT's match)
                issuer=own.get("issuer", ""),
                jwks_uri=own.get("jwksUri", ""),
                username_pattern=own.get("usernamePattern", ""),
                bearer_enabled=_bool(own.get("bearer.enabled", "false")),
                accepted_audiences=_list(own.get("audCheck.acceptedAudiences", "")),
                force_user_create=_bool(own.get("forceUserCreate", "false")),
                bearer_force_user_create=_bool(bearer_create if bearer_create is not None else own.get("forceUserCreate", "false")),
                allowed_email_domains=_list(own.get("allowedEmailDomains", "")),
                raw=own,
            )
        )
    return out


def read_xnat_providers(path: str | Path) -> list[XnatProvider]:
    """The providers of XNAT's ``openid-provider.properties`` at ``path``; ConfigError if unreadable."""
    try:
        text = Path(path).read_text(encoding="iso-8859-1")  # Properties.load(InputStream)'s encoding
    except OSError as e:
        raise ConfigError(f"cannot read XNAT's OpenID settings at {path} ({type(e).__name__})") from None
    providers = xnat_providers(parse_properties(text))
    if not providers:
        raise ConfigError(f"{path} lists no provider in openid.providers")
    return providers
