"""Several OpenID providers configured once: each entry checked at start, clashes refused, and
XNAT's own openid-provider.properties read as XNAT reads it."""

from __future__ import annotations

import pytest

from xnat_oauth.errors import ConfigError
from xnat_oauth.oidc.providers import check_providers, provider_from_entry
from xnat_oauth.xnat_properties import parse_properties, read_xnat_providers, xnat_providers

ENV = {"AAF_SECRET": "s3cret-aaf", "G_ID": "g-client"}


def entry(**kw):
    return {"id": "aaf", "preset": "aaf", "client_id": "hub", "client_secret_env": "AAF_SECRET", **kw}


def test_an_entry_takes_its_preset_and_its_secret_from_the_environment():
    p = provider_from_entry(entry(), where="oidc_providers[0]", environ=ENV)
    assert (p.id, p.preset.name, p.client_id, p.client_secret) == ("aaf", "aaf", "hub", "s3cret-aaf")
    assert p.button_text == "Log in with AAF" and "openid" in p.scope
    assert p.username_pattern.pattern == "[providerId]_[sub]" and not p.exchange_off
    assert "s3cret" not in repr(p), "the secret never shows in a repr (logs, tracebacks)"


def test_an_entry_reads_its_secret_from_a_file_and_its_client_id_from_the_environment(tmp_path):
    secret = tmp_path / "google-secret"
    secret.write_text("from-a-file\n")
    p = provider_from_entry(
        {"id": "google", "preset": "google", "client_id_env": "G_ID", "client_secret_file": str(secret),
         "username_pattern": "[providerId]-[sub]", "required_hosted_domains": ["uni.edu"]},
        where="x",
        environ=ENV,
    )
    assert (p.client_id, p.client_secret) == ("g-client", "from-a-file")
    assert p.required_hosted_domains == frozenset({"uni.edu"})


@pytest.mark.parametrize(
    "bad, said",
    [
        ({"client_secrt_env": "X"}, "unknown key"),
        ({"id": "1aaf"}, "a letter"),
        ({"id": "a/b"}, "a letter"),
        ({"preset": None}, "set preset"),
        ({"preset": "facebook"}, "unknown oidc_provider"),
        ({"client_id": ""}, "client_id"),
        ({"client_secret_env": "MISSING"}, "MISSING"),
        ({"client_secret": "inline"}, "not ["),  # two ways of giving the secret
        ({"token_exchange": "maybe"}, "token_exchange"),
        ({"exchange_token": "refresh_token"}, "exchange_token"),
        ({"username_pattern": "[providerId]_[email]"}, "never fills [email]"),
        ({"aaf_idp_entity_id": "https://idp", "preset": "google"}, "entityID"),
    ],
)
def test_a_wrong_entry_is_refused_saying_what_is_wrong(bad, said):
    with pytest.raises(ConfigError, match=said.replace("[", r"\[")):
        provider_from_entry(entry(**bad), where="oidc_providers[0]", environ=ENV)


def test_a_missing_secret_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="client_secret_file"):
        provider_from_entry(
            entry(client_secret_env=None, client_secret_file=str(tmp_path / "nope")), where="x", environ=ENV
        )


def two(**google):
    aaf = provider_from_entry(entry(), where="0", environ=ENV)
    g = provider_from_entry(
        {"id": "google", "preset": "google", "client_id": "g", "client_secret": "x", **google}, where="1", environ=ENV
    )
    return [aaf, g]


def test_two_providers_with_their_ids_in_every_name_share_a_hub():
    assert [p.id for p in check_providers(two())] == ["aaf", "google"]


def test_a_pattern_that_cannot_tell_providers_apart_is_refused():
    with pytest.raises(ConfigError, match=r"google.*has no \[providerId\]"):
        check_providers(two(username_pattern="[sub]"))


def test_one_id_or_one_issuer_for_two_providers_is_refused():
    aaf, g = two()
    with pytest.raises(ConfigError, match="the id 'aaf'"):
        check_providers([aaf, aaf])
    other = provider_from_entry(entry(id="aaf2"), where="2", environ=ENV)
    with pytest.raises(ConfigError, match="share the issuer https://central.aaf.edu.au"):
        check_providers([aaf, other])


def test_a_single_provider_may_use_a_pattern_without_its_id():
    only = provider_from_entry(entry(username_pattern="[sub]"), where="0", environ=ENV)
    assert check_providers([only]) == [only]


# -- XNAT's openid-provider.properties -----------------------------------------------------------

PROPERTIES = """\
# as NRG's samples write them
openid.providers=aaf,google
openid.aaf.issuer=https://central.aaf.edu.au
openid.aaf.jwksUri=https://central.aaf.edu.au/oidc/jwks
openid.aaf.usernamePattern=[providerId]_[sub]
openid.aaf.bearer.enabled=true
openid.aaf.audCheck.acceptedAudiences=hub, other-client
openid.google.issuer = https://accounts.google.com
openid.google.usernamePattern : [providerId]-[sub]
openid.google.allowedEmailDomains=uni.edu  \\
    ,other.edu
"""


def test_xnat_settings_are_read_as_java_reads_them():
    props = parse_properties(PROPERTIES)
    assert props["openid.google.issuer"] == "https://accounts.google.com"
    assert props["openid.google.usernamePattern"] == "[providerId]-[sub]"
    aaf, google = xnat_providers(props)
    assert (aaf.id, aaf.bearer_enabled, aaf.accepted_audiences) == ("aaf", True, ("hub", "other-client"))
    assert google.allowed_email_domains == ("uni.edu", "other.edu")


def test_trailing_whitespace_is_kept_as_xnat_keeps_it():
    (p,) = xnat_providers(parse_properties("openid.providers=aaf\nopenid.aaf.issuer=https://x.example  \n"))
    assert p.issuer == "https://x.example  ", "XNAT compares this exactly: the hub must see the same"


def test_a_file_without_providers_is_refused(tmp_path):
    path = tmp_path / "openid-provider.properties"
    path.write_text("openid.aaf.issuer=https://central.aaf.edu.au\n")
    with pytest.raises(ConfigError, match="openid.providers"):
        read_xnat_providers(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_xnat_providers(tmp_path / "absent")
