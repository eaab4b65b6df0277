"""Provider presets: the fixed facts about AAF and Google, and the generic issuer."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from xnat_oauth.errors import ConfigError
from xnat_oauth.oidc import PRESETS, OidcProvider, generic_preset, get_preset

AAF_SCOPES = [
    "openid",
    "profile",
    "email",
    "eduperson_principal_name",
    "eduperson_scoped_affiliation",
    "eduperson_entitlement",
    "schac_home_organization",
]


def test_the_three_presets_exist():
    assert set(PRESETS) == {"aaf", "aaf-test", "google"}


@pytest.mark.parametrize(
    "name, issuer",
    [("aaf", "https://central.aaf.edu.au"), ("aaf-test", "https://central.test.aaf.edu.au")],
)
def test_aaf_presets(name, issuer):
    preset = PRESETS[name]
    assert preset.issuer == issuer
    assert preset.accepted_issuers == (issuer,)
    assert preset.discovery_url == f"{issuer}/.well-known/openid-configuration"
    assert list(preset.scopes) == AAF_SCOPES
    assert preset.login_button_text == "Log in with AAF"
    assert preset.xnat_provider_id == "aaf"


def test_aaf_entity_id_skips_the_discovery_page():
    params = PRESETS["aaf"].extra_authorize_params(idp_entity_id="https://idp.uq.edu.au/idp/shibboleth")
    assert params == {"entityID": "https://idp.uq.edu.au/idp/shibboleth"}
    assert PRESETS["aaf"].extra_authorize_params() == {}


def test_google_preset():
    google = PRESETS["google"]
    assert google.issuer == "https://accounts.google.com"
    assert set(google.accepted_issuers) == {"https://accounts.google.com", "accounts.google.com"}
    assert google.accepted_issuers[0] == google.issuer
    assert google.discovery_url == "https://accounts.google.com/.well-known/openid-configuration"
    assert list(google.scopes) == ["openid", "email", "profile"]
    assert google.login_button_text == "Log in with Google"
    assert google.xnat_provider_id == "google"


def test_google_has_no_entity_id_parameter():
    with pytest.raises(ConfigError, match="entityID"):
        PRESETS["google"].extra_authorize_params(idp_entity_id="https://idp.example.org")


def test_presets_are_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["aaf"].issuer = "https://elsewhere.example.org"  # type: ignore[misc]
    assert len({hash(p) for p in PRESETS.values()}) == 3


def test_every_preset_url_is_https():
    for preset in PRESETS.values():
        assert preset.issuer.startswith("https://")
        assert preset.discovery_url.startswith("https://")


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        get_preset("facebook")
    assert "aaf" in str(err.value) and "google" in str(err.value) and "oidc_issuer" in str(err.value)
    assert get_preset("aaf-test") is PRESETS["aaf-test"]


def test_generic_preset_needs_a_provider_id():
    with pytest.raises(ConfigError, match="xnat_provider_id"):
        generic_preset("https://login.example.org", xnat_provider_id="")
    preset = generic_preset("https://login.example.org/", xnat_provider_id="keycloak")
    assert preset.discovery_url == "https://login.example.org/.well-known/openid-configuration"
    assert preset.accepted_issuers == ("https://login.example.org/",)
    assert preset.xnat_provider_id == "keycloak"


async def test_provider_from_preset_takes_issuers_and_discovery_url_without_fetching():
    # A transport that fails the test if anything is sent: building a provider is offline.
    def refuse(request):
        raise AssertionError(f"unexpected request to {request.url}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        provider = OidcProvider.from_preset(http, PRESETS["google"])
    assert provider.issuer == "https://accounts.google.com"
    assert provider.accepted_issuers == ("https://accounts.google.com", "accounts.google.com")
    assert provider.discovery_url == PRESETS["google"].discovery_url
    assert provider.discovery_fetch_count == 0
