"""Several OpenID providers on one hub, configured once: what each one is, checked at start.

XNAT sites run several providers at once (``openid.providers=aaf,google`` in the OpenID plugin).
Each :class:`ProviderConfig` is one of them: its preset or issuer, the hub's own client
registration there, its id in XNAT (``[providerId]``, ``openid.<id>.*``), username pattern,
claim requirements, exchange settings and button text. :func:`providers_from_config` turns
``c.XnatOAuthenticator.oidc_providers`` (or the single-provider settings, a shorthand for one) into
the list, refusing what could never work or would mix people up: duplicate ids or issuers, and,
with more than one provider, a pattern that cannot tell their users apart.

Pure functions of their arguments (and of the environment/files a client secret is read from);
the discovery documents and keys are fetched later, per provider (``discovery.py``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from ..identity import PROVIDER_ID_PLACEHOLDER, UsernamePattern
from .presets import ProviderPreset, generic_preset, get_preset

#: a provider id: XNAT's ``openid.<id>.*`` key and a URL path segment of the hub
_PROVIDER_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

#: the keys an ``oidc_providers`` entry may have (anything else is a typo, refused at start)
ENTRY_KEYS = frozenset(
    {
        "id",
        "preset",
        "issuer",
        "client_id",
        "client_id_env",
        "client_secret",
        "client_secret_env",
        "client_secret_file",
        "username_pattern",
        "required_scoped_affiliations",
        "required_entitlements",
        "required_home_organisations",
        "required_hosted_domains",
        "token_exchange",
        "exchange_token",
        "button_text",
        "scope",
        "aaf_idp_entity_id",
        "authorize_url",
        "token_url",
        "userdata_url",
        "callback_url",
    }
)
TOKEN_EXCHANGES = ("bearer", "off")
EXCHANGE_TOKENS = ("id_token", "access_token")


@dataclass(frozen=True)
class ProviderConfig:
    """One OpenID provider of the hub, as configured (nothing fetched yet)."""

    #: the provider's id in XNAT's OpenID plugin: ``[providerId]``, ``openid.<id>.*``, and the
    #: path of its login and callback URLs on the hub
    id: str
    preset: ProviderPreset
    client_id: str
    client_secret: str = field(repr=False)
    username_pattern: UsernamePattern
    token_exchange: str = "bearer"  # noqa: S105 - a setting's value, not a secret
    exchange_token: str = "id_token"  # noqa: S105 - which token to send, not a token
    button_text: str = ""
    scope: tuple[str, ...] = ()
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    #: authorize_url / token_url / userdata_url set by the admin (they win over discovery)
    endpoint_overrides: Mapping[str, str] = field(default_factory=dict)
    #: the redirect URI registered at the provider; empty: derived from the hub's
    callback_url: str = ""
    required_scoped_affiliations: frozenset[str] = frozenset()
    required_entitlements: frozenset[str] = frozenset()
    required_home_organisations: frozenset[str] = frozenset()
    required_hosted_domains: frozenset[str] = frozenset()

    @property
    def exchange_off(self) -> bool:
        return self.token_exchange == "off"  # noqa: S105 - a setting's value

    @property
    def login_service(self) -> str:
        return self.preset.login_service


def _strings(entry: Mapping[str, Any], key: str, where: str) -> frozenset[str]:
    value = entry.get(key) or ()
    if isinstance(value, str):
        value = (value,)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return frozenset(v for v in value if v.strip())


def _secret(entry: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> str:
    given = [k for k in ("client_secret", "client_secret_env", "client_secret_file") if entry.get(k)]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of client_secret_env, client_secret_file (or client_secret), not {given}")
    if "client_secret_env" in given:
        name = entry["client_secret_env"]
        value = environ.get(name, "")
        if not value:
            raise ConfigError(f"{where}: the environment variable {name} (client_secret_env) is unset or empty")
        return value
    if "client_secret_file" in given:
        path = Path(entry["client_secret_file"])
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read client_secret_file {path} ({type(e).__name__})") from None
        if not value:
            raise ConfigError(f"{where}: client_secret_file {path} is empty")
        return value
    return str(entry.get("client_secret") or "")


def provider_from_entry(
    entry: Mapping[str, Any],
    *,
    where: str,
    environ: Mapping[str, str] = os.environ,
) -> ProviderConfig:
    """One ``oidc_providers`` entry as a :class:`ProviderConfig`; ConfigError saying what is wrong."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a dict, got {type(entry).__name__}")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are {sorted(ENTRY_KEYS)}")
    pid = entry.get("id")
    if not isinstance(pid, str) or not _PROVIDER_ID.fullmatch(pid):
        raise ConfigError(
            f"{where}: id must be the provider's id in XNAT's OpenID plugin (openid.<id>.*): a "
            f"letter, then letters, digits, _ or - (got {pid!r})"
        )
    where = f"{where} ({pid!r})"
    issuer = entry.get("issuer") or ""
    if entry.get("preset"):
        preset = get_preset(entry["preset"])
        if issuer and issuer != preset.issuer:
            preset = moved_preset(preset, issuer)
    elif issuer:
        preset = generic_preset(issuer, xnat_provider_id=pid)
    else:
        raise ConfigError(f"{where}: set preset (aaf, aaf-test, google) or issuer")
    client_id = entry.get("client_id") or ""
    if entry.get("client_id_env"):
        if client_id:
            raise ConfigError(f"{where}: give client_id or client_id_env, not both")
        client_id = environ.get(entry["client_id_env"], "")
    if not client_id:
        raise ConfigError(f"{where}: set client_id (or client_id_env): the hub's registration at the provider")
    exchange = str(entry.get("token_exchange") or "bearer").lower()
    if exchange not in TOKEN_EXCHANGES:
        raise ConfigError(f"{where}: token_exchange must be one of {list(TOKEN_EXCHANGES)}")
    exchange_token = str(entry.get("exchange_token") or "id_token").lower()
    if exchange_token not in EXCHANGE_TOKENS:
        raise ConfigError(f"{where}: exchange_token must be one of {list(EXCHANGE_TOKENS)}")
    try:
        pattern = UsernamePattern(entry.get("username_pattern"))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    idp_entity_id = entry.get("aaf_idp_entity_id") or None
    try:
        extra = preset.extra_authorize_params(idp_entity_id=idp_entity_id)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    scope = entry.get("scope") or preset.scopes
    if isinstance(scope, str):
        scope = scope.split()
    overrides = {k: entry[k] for k in ("authorize_url", "token_url", "userdata_url") if entry.get(k)}
    return ProviderConfig(
        id=pid,
        preset=preset,
        client_id=client_id,
        client_secret=_secret(entry, where, environ),
        username_pattern=pattern,
        token_exchange=exchange,
        exchange_token=exchange_token,
        button_text=entry.get("button_text") or f"Log in with {preset.login_service}",
        scope=tuple(scope),
        extra_authorize_params=extra,
        endpoint_overrides=overrides,
        callback_url=entry.get("callback_url") or "",
        required_scoped_affiliations=_strings(entry, "required_scoped_affiliations", where),
        required_entitlements=_strings(entry, "required_entitlements", where),
        required_home_organisations=_strings(entry, "required_home_organisations", where),
        required_hosted_domains=_strings(entry, "required_hosted_domains", where),
    )


def moved_preset(preset: ProviderPreset, issuer: str) -> ProviderPreset:
    """A preset's behaviour at another issuer: a staging federation, a test provider."""
    from dataclasses import replace

    return replace(
        preset,
        issuer=issuer,
        accepted_issuers=(issuer,),
        discovery_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
    )


def check_providers(providers: Iterable[ProviderConfig]) -> list[ProviderConfig]:
    """The providers, in order, if they can share one hub; ConfigError naming the clash if not.

    One id and one issuer per provider (the (issuer, sub) of a person must name one provider).
    With several providers, each pattern must put ``[providerId]`` in every name, or two people
    of two providers with the same ``sub`` (or ``preferred_username``) would become one account.
    """
    providers = list(providers)
    seen_ids: dict[str, ProviderConfig] = {}
    seen_issuers: dict[str, str] = {}
    for p in providers:
        if p.id in seen_ids:
            raise ConfigError(f"two OpenID providers have the id {p.id!r}: give each its own XNAT provider id")
        seen_ids[p.id] = p
        for iss in p.preset.accepted_issuers:
            if iss in seen_issuers:
                raise ConfigError(
                    f"OpenID providers {seen_issuers[iss]!r} and {p.id!r} share the issuer {iss}: one "
                    "provider per issuer (a person's (issuer, sub) must name one provider)"
                )
            seen_issuers[iss] = p.id
    if len(providers) > 1:
        for p in providers:
            if PROVIDER_ID_PLACEHOLDER not in p.username_pattern.placeholders:
                raise ConfigError(
                    f"OpenID provider {p.id!r}: its username pattern {p.username_pattern.pattern!r} has no "
                    f"[{PROVIDER_ID_PLACEHOLDER}], so with {len(providers)} providers two people of two "
                    "providers could get one name; use e.g. [providerId]_[sub] (in XNAT's "
                    "openid.<id>.usernamePattern too)"
                )
    return providers
