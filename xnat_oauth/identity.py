r"""From verified OpenID Connect claims to the XNAT username, and who may log in at all.

The hub username must equal the XNAT username character for character, so it is built exactly as
XNAT's openid-auth-plugin builds it:

* ``usernamePattern`` with ``[claim]`` placeholders in the plugin's syntax
  (``\[([a-zA-Z0-9_.:/-]+)]``), default ``[providerId]_[sub]``; ``[providerId]`` is the
  provider's id in XNAT and wins over a claim of that name (the plugin resolves its own fields
  before claims); a blank pattern means the default; ``[email]``, ``[username]``, ``[firstName]``
  and ``[lastName]`` never resolve in the plugin (its own Java fields of those names shadow the
  claims), so a pattern using them is refused;
* a claim that is absent, blank or the text ``null`` stops the login (the plugin refuses too);
* on the whole result, every character outside ``[a-zA-Z0-9-_'.]`` becomes ``_`` (the plugin's
  ``sanitizeUsername`` when it creates the account); case is kept.

Where this is stricter than the plugin, it refuses rather than guess: list, object, boolean and
non-integer values (Java's ``toString`` of those has no Python twin), and placeholders are
filled in one pass (the plugin's repeated ``String.replace`` could also fill a ``[x]`` that a claim
value happens to contain).

The rendering is the plugin's *mapping key* (``auth_user`` in XNAT's auth table), which is the
XNAT login only for accounts the plugin auto-created; when XNAT authenticates the login, the
login XNAT names wins (see ``docs/openid-connect.md``). :func:`check_xnat_username` applies XNAT's
own rule for logins (``Users.isValidUsername``) where the rendering must be the login.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .oidc.errors import ClaimNotAllowed, InvalidXnatUsername, MissingClaim, UnusableClaim

__all__ = [
    "DEFAULT_USERNAME_PATTERN",
    "PROVIDER_ID_PLACEHOLDER",
    "UsernamePattern",
    "sanitize_username",
    "check_xnat_username",
    "claim_text",
    "check_aaf_claims",
    "check_hosted_domain",
    "MissingClaim",
    "UnusableClaim",
    "ClaimNotAllowed",
]

DEFAULT_USERNAME_PATTERN = "[providerId]_[sub]"
PROVIDER_ID_PLACEHOLDER = "providerId"

_PLACEHOLDER = re.compile(r"\[([^\[\]]+)\]")
#: what the plugin's ``OpenIdConnectUserDetails`` recognises as a placeholder name
_PLUGIN_PLACEHOLDER_NAME = re.compile(r"[a-zA-Z0-9_.:/-]+")
#: placeholders the plugin never fills from claims: its own fields of these names shadow them
UNRESOLVABLE_PLACEHOLDERS = frozenset({"email", "username", "firstName", "lastName"})
_NOT_IN_XNAT_USERNAME = re.compile(r"[^A-Za-z0-9\-_'.]")
#: XNAT's rule for logins, ``Patterns.EXPR_USERNAME`` (64 characters since XNAT-7860, Aug 2023)
XNAT_USERNAME_RULE = re.compile(r"[a-zA-Z][A-Za-z0-9\-_'.]{0,63}")

# AAF claim names as they appear in tokens (the scopes are spelled eduperson_*, the claims edu_person_*)
AAF_SCOPED_AFFILIATION = "edu_person_scoped_affiliation"
AAF_ENTITLEMENT = "edu_person_entitlement"
AAF_HOME_ORGANISATION = "schac_home_organization"


def sanitize_username(name: str) -> str:
    """``name`` with every character outside ``[a-zA-Z0-9-_'.]`` replaced by ``_`` (as XNAT does)."""
    return _NOT_IN_XNAT_USERNAME.sub("_", name)


def _parse(pattern: str) -> tuple[str, ...]:
    """The placeholder names of ``pattern`` in order; ConfigError saying where it is malformed."""
    names: list[str] = []
    start: int | None = None
    for i, ch in enumerate(pattern):
        if ch == "[":
            if start is not None:
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: '[' at position {i} opens a placeholder "
                    f"inside the one opened at position {start}; placeholders cannot nest"
                )
            start = i
        elif ch == "]":
            if start is None:
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: ']' at position {i} closes no placeholder"
                )
            name = pattern[start + 1 : i]
            if not name.strip():
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: empty placeholder at position {start}; "
                    "write a claim name between the brackets, e.g. [sub]"
                )
            if any(c.isspace() for c in name):
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: placeholder [{name}] contains whitespace; "
                    "claim names have none"
                )
            if not _PLUGIN_PLACEHOLDER_NAME.fullmatch(name):
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: [{name}] is not a placeholder XNAT's OpenID "
                    "plugin recognises (claim names of letters, digits and _ . : / -), so XNAT would "
                    "keep it as text and map logins differently from the hub"
                )
            if name in UNRESOLVABLE_PLACEHOLDERS:
                raise ConfigError(
                    f"xnat_username_pattern {pattern!r}: XNAT's OpenID plugin never fills [{name}] "
                    f"(its own '{name}' field shadows the claim of that name), so no login could "
                    "ever map through this pattern; use another claim, e.g. [sub], "
                    "[preferred_username] or [edu_person_principal_name]"
                )
            names.append(name)
            start = None
    if start is not None:
        raise ConfigError(
            f"xnat_username_pattern {pattern!r}: '[' at position {start} is never closed"
        )
    return tuple(names)


def claim_text(claims: Mapping[str, Any], name: str) -> str:
    """The claim ``name`` as the text XNAT would put into a username.

    MissingClaim if absent, blank or ``"null"``; UnusableClaim for lists, objects, booleans and
    non-integer numbers; integers become their decimal text.
    """
    value = claims.get(name)
    if value is None:
        raise MissingClaim(name)
    if isinstance(value, bool):  # before int: bool is an int in Python
        raise UnusableClaim(name, "boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # The plugin treats blank and the text "null" (Java's String.valueOf(null)) as missing.
        if not value.strip() or value == "null":
            raise MissingClaim(name)
        return value
    if isinstance(value, float):
        raise UnusableClaim(name, "non-integer number")
    if isinstance(value, (list, tuple)):
        raise UnusableClaim(name, "list")
    if isinstance(value, dict):
        raise UnusableClaim(name, "JSON object")
    raise UnusableClaim(name, type(value).__name__)


class UsernamePattern:
    """XNAT's ``usernamePattern``, checked when the hub starts and rendered at each login.

    ConfigError at construction for unbalanced or nested brackets, empty placeholders, or a
    pattern that names no claim (every user would get the same name).
    """

    def __init__(self, pattern: str | None = DEFAULT_USERNAME_PATTERN):
        if pattern is not None and not isinstance(pattern, str):
            raise ConfigError(f"xnat_username_pattern must be a string, got {type(pattern).__name__}")
        if not pattern or not pattern.strip():
            pattern = DEFAULT_USERNAME_PATTERN  # the plugin's defaultIfBlank
        placeholders = _parse(pattern)
        if not placeholders:
            raise ConfigError(
                f"xnat_username_pattern {pattern!r} has no [claim] placeholder, so every user would "
                f"get the same name; XNAT's default is {DEFAULT_USERNAME_PATTERN}"
            )
        if all(p == PROVIDER_ID_PLACEHOLDER for p in placeholders):
            raise ConfigError(
                f"xnat_username_pattern {pattern!r} names no claim, only [{PROVIDER_ID_PLACEHOLDER}], "
                f"so every user would get the same name; XNAT's default is {DEFAULT_USERNAME_PATTERN}"
            )
        self.pattern = pattern
        #: placeholder names, in order, without repeats
        self.placeholders: tuple[str, ...] = tuple(dict.fromkeys(placeholders))

    @property
    def claims(self) -> tuple[str, ...]:
        """The claims the pattern needs (``providerId`` is not a claim)."""
        return tuple(p for p in self.placeholders if p != PROVIDER_ID_PLACEHOLDER)

    def mapping_key(self, claims: Mapping[str, Any], provider_id: str) -> str:
        """The plugin's mapping key (``auth_user``) for these claims, unsanitised as the plugin
        keeps it (``OpenIdUserResolver``): ``aaf_alice@x`` and ``aaf_alice_x`` are two keys.

        MissingClaim / UnusableClaim naming the claim at fault.
        """
        if not provider_id or not isinstance(provider_id, str):
            raise ConfigError("xnat_provider_id is empty")

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == PROVIDER_ID_PLACEHOLDER:
                return provider_id
            return claim_text(claims, name)

        return _PLACEHOLDER.sub(fill, self.pattern)

    def render(self, claims: Mapping[str, Any], provider_id: str) -> str:
        """The login the plugin gives an account it creates for these claims: the mapping key
        with every character outside ``[a-zA-Z0-9-_'.]`` replaced by ``_``."""
        return sanitize_username(self.mapping_key(claims, provider_id))

    def __repr__(self) -> str:
        return f"UsernamePattern({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsernamePattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)


def check_xnat_username(name: str) -> str:
    """``name`` if XNAT can have it as a login; InvalidXnatUsername saying why otherwise."""
    if XNAT_USERNAME_RULE.fullmatch(name):
        return name
    if not name:
        why = "it is empty"
    elif not name[0].isascii() or not name[0].isalpha():
        why = "it does not start with a letter"
    elif len(name) > 64:
        why = f"it has {len(name)} characters, more than 64"
    else:
        why = "it has characters XNAT does not allow"
    raise InvalidXnatUsername(name, why)


def _as_list(allowed: Iterable[str] | str) -> list[str]:
    # A lone string is one value, not a sequence of one-letter values.
    return [allowed] if isinstance(allowed, str) else [a for a in allowed if a and a.strip()]


def _text_values(value: Any) -> list[str] | None:
    """A claim that may be a string or a list of strings, as a list; None if it is neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _require_one_of(
    claims: Mapping[str, Any],
    claim: str,
    allowed: Iterable[str] | str,
    *,
    fold_case: bool,
    what: str,
) -> None:
    allowed = _as_list(allowed)
    if not allowed:
        return
    present = claims.get(claim)
    if present is None:
        raise MissingClaim(claim)
    values = _text_values(present)
    if values is None:
        raise UnusableClaim(claim, type(present).__name__)
    norm = (lambda s: s.strip().casefold()) if fold_case else (lambda s: s)
    if not {norm(v) for v in values} & {norm(a) for a in allowed}:
        raise ClaimNotAllowed(
            claim,
            f"{claim}: none of the user's values is an allowed {what}",
            user_message=(
                f"Your account is not allowed on this hub: its {what} ({claim}) is not one this "
                "hub admits. Ask the hub's administrator if you think it should be."
            ),
        )


def check_aaf_claims(
    claims: Mapping[str, Any],
    *,
    required_scoped_affiliations: Iterable[str] | str = (),
    required_entitlements: Iterable[str] | str = (),
    required_home_organisations: Iterable[str] | str = (),
) -> None:
    """AAF's recommended authorisation: scoped affiliation, entitlement, home organisation.

    Each non-empty list is a requirement the user must meet with at least one value (so lists
    combine with AND, values within a list with OR). Empty lists impose nothing. Scoped
    affiliations (``staff@uq.edu.au``) and home organisations (domain names) compare without
    case; entitlements are URIs and compare exactly. A rule whose claim was not released is a
    MissingClaim naming it. Never uses email (AAF does not verify it).
    """
    _require_one_of(
        claims, AAF_SCOPED_AFFILIATION, required_scoped_affiliations,
        fold_case=True, what="scoped affiliation",
    )
    _require_one_of(
        claims, AAF_ENTITLEMENT, required_entitlements, fold_case=False, what="entitlement"
    )
    _require_one_of(
        claims, AAF_HOME_ORGANISATION, required_home_organisations,
        fold_case=True, what="home organisation",
    )


def check_hosted_domain(claims: Mapping[str, Any], required_domains: Iterable[str] | str) -> None:
    """Google Workspace domains: the ``hd`` claim must be one of ``required_domains``.

    Only the signed ``hd`` claim counts. The email's suffix proves nothing (a personal Google
    account can carry any address) and the ``hd`` authorize parameter only styles the login page.
    """
    allowed = {d.strip().lstrip("@").casefold() for d in _as_list(required_domains)}
    if not allowed:
        return
    hd = claims.get("hd")
    if not isinstance(hd, str) or not hd.strip():
        raise ClaimNotAllowed(
            "hd",
            "no hd claim: not a Google Workspace account",
            user_message="Please log in with your organisation's Google account.",
        )
    if hd.strip().casefold() not in allowed:
        raise ClaimNotAllowed(
            "hd",
            "hd is not an allowed hosted domain",
            user_message="Please log in with your organisation's Google account.",
        )
