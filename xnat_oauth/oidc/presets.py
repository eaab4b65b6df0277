"""What the hub knows about AAF and Google before asking them: data, not code.

``c.XnatOAuthenticator.oidc_provider = "aaf" | "aaf-test" | "google"`` picks one of
:data:`PRESETS`; any other provider is described by :func:`generic_preset` from its issuer.
Endpoints are NOT here: they come from the issuer's discovery document (``discovery.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

_AAF_SCOPES = (
    "openid",
    "profile",
    "email",
    "eduperson_principal_name",
    "eduperson_scoped_affiliation",
    "eduperson_entitlement",
    "schac_home_organization",
)
_OIDC_SCOPES = ("openid", "email", "profile")


@dataclass(frozen=True)
class ProviderPreset:
    """One identity provider's fixed facts."""

    #: the preset's name, as an admin writes it in the config
    name: str
    #: the issuer the discovery document must name, exactly
    issuer: str
    #: every ``iss`` an ID token may carry (the issuer first); Google still signs a legacy spelling
    accepted_issuers: tuple[str, ...]
    discovery_url: str
    #: scopes requested unless the admin sets ``scope``
    scopes: tuple[str, ...]
    #: shown as ``Log in with {login_service}`` (oauthenticator's ``login_service``)
    login_service: str
    #: the provider's id in XNAT's openid-auth-plugin, the ``[providerId]`` of the username pattern
    xnat_provider_id: str
    #: name of the authorize parameter that picks the user's home IdP, if the provider has one
    #: (AAF: ``entityID`` sends the user straight there, skipping AAF's discovery page)
    idp_entity_id_param: str | None = None

    @property
    def login_button_text(self) -> str:
        """The text of the login button."""
        return f"Log in with {self.login_service}"

    def extra_authorize_params(self, *, idp_entity_id: str | None = None) -> dict[str, str]:
        """Extra authorize parameters for this provider; ConfigError if it has no such feature."""
        params: dict[str, str] = {}
        if idp_entity_id:
            if self.idp_entity_id_param is None:
                raise ConfigError(
                    f"oidc provider {self.name!r} has no IdP entityID parameter; "
                    "only the AAF presets can skip a discovery page"
                )
            params[self.idp_entity_id_param] = idp_entity_id
        return params


def _aaf(name: str, host: str) -> ProviderPreset:
    issuer = f"https://{host}"
    return ProviderPreset(
        name=name,
        issuer=issuer,
        accepted_issuers=(issuer,),
        discovery_url=f"{issuer}/.well-known/openid-configuration",
        scopes=_AAF_SCOPES,
        login_service="AAF",
        xnat_provider_id="aaf",
        idp_entity_id_param="entityID",
    )


PRESETS: dict[str, ProviderPreset] = {
    "aaf": _aaf("aaf", "central.aaf.edu.au"),
    "aaf-test": _aaf("aaf-test", "central.test.aaf.edu.au"),
    "google": ProviderPreset(
        name="google",
        issuer="https://accounts.google.com",
        accepted_issuers=("https://accounts.google.com", "accounts.google.com"),
        discovery_url="https://accounts.google.com/.well-known/openid-configuration",
        scopes=_OIDC_SCOPES,
        login_service="Google",
        xnat_provider_id="google",
    ),
}


def get_preset(name: str) -> ProviderPreset:
    """The preset called ``name``; ConfigError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown oidc_provider {name!r}; choose one of {sorted(PRESETS)} "
            "or set oidc_issuer for any other OpenID Connect provider"
        ) from None


def generic_preset(
    issuer: str,
    *,
    xnat_provider_id: str,
    login_service: str = "OpenID Connect",
    scopes: tuple[str, ...] = _OIDC_SCOPES,
) -> ProviderPreset:
    """A preset for any other issuer: discovery at the standard place."""
    if not issuer:
        raise ConfigError("oidc_issuer is empty")
    if not xnat_provider_id:
        raise ConfigError(
            "xnat_provider_id must be set with oidc_issuer: it is the provider's id in XNAT's "
            "openid-auth-plugin, the [providerId] of the username pattern"
        )
    return ProviderPreset(
        name="custom",
        issuer=issuer,
        accepted_issuers=(issuer,),
        discovery_url=issuer.rstrip("/") + "/.well-known/openid-configuration",
        scopes=tuple(scopes),
        login_service=login_service,
        xnat_provider_id=xnat_provider_id,
    )
