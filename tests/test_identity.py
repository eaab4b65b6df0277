"""Username mapping identical to XNAT's openid-auth-plugin, and claim-based authorisation."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnat_oauth.errors import ConfigError
from xnat_oauth.oidc.errors import InvalidXnatUsername
from xnat_oauth.identity import (
    DEFAULT_USERNAME_PATTERN,
    ClaimNotAllowed,
    MissingClaim,
    UnusableClaim,
    UsernamePattern,
    check_aaf_claims,
    check_xnat_username,
    check_hosted_domain,
    sanitize_username,
)

AAF_SUB = "YAdr3eQ9kLmZ_x-Pq7RsTuVwXyZaBcDeFgHiJkLmNoP"  # 43 characters, mixed case, like AAF's
XNAT_CHARS = re.compile(r"^[A-Za-z0-9\-_'.]*$")


# -- the default pattern ---------------------------------------------------------------------


def test_default_pattern_keeps_a_mixed_case_43_char_sub():
    assert len(AAF_SUB) == 43
    name = UsernamePattern().render({"sub": AAF_SUB}, "aaf")
    assert name == "aaf_" + AAF_SUB
    assert name != name.lower()


def test_blank_pattern_means_the_default_as_in_xnat():
    assert UsernamePattern("").pattern == DEFAULT_USERNAME_PATTERN
    assert UsernamePattern("   ").pattern == DEFAULT_USERNAME_PATTERN
    assert UsernamePattern(None).pattern == DEFAULT_USERNAME_PATTERN


def test_provider_id_is_the_configured_one_even_if_a_claim_has_that_name():
    claims = {"sub": "abc", "providerId": "evil"}
    assert UsernamePattern().render(claims, "google") == "google_abc"


# -- custom patterns and character replacement -----------------------------------------------


def test_eppn_pattern_replaces_the_at_sign():
    pattern = UsernamePattern("[providerId]_[edu_person_principal_name]")
    claims = {"sub": AAF_SUB, "edu_person_principal_name": "Jane.Doe@uq.edu.au"}
    assert pattern.render(claims, "aaf") == "aaf_Jane.Doe_uq.edu.au"


def test_an_address_claim_keeps_apostrophe_dot_and_case_replaces_the_rest():
    pattern = UsernamePattern("[upn]")
    claims = {"upn": "J.O'Neil+xnat@Example.org"}
    assert pattern.render(claims, "google") == "J.O'Neil_xnat_Example.org"


def test_literal_parts_of_the_pattern_are_sanitised_too():
    assert UsernamePattern("oidc:[sub]@[providerId]").render({"sub": "Ab"}, "p") == "oidc_Ab_p"


def test_each_non_ascii_character_becomes_one_underscore():
    assert UsernamePattern("[name]").render({"name": "Zoë Ñandú 😀"}, "p") == "Zo___and___"


def test_integer_claims_become_their_decimal_text():
    assert UsernamePattern("[providerId]_[uid]").render({"uid": 1042}, "ldap") == "ldap_1042"


def test_a_placeholder_used_twice_is_filled_twice():
    assert UsernamePattern("[sub]-[sub]").render({"sub": "x"}, "p") == "x-x"


def test_uri_named_claims_are_placeholders():
    claims = {"https://example.org/upn": "alice@example.org"}
    assert UsernamePattern("[https://example.org/upn]").render(claims, "p") == "alice_example.org"


def test_claims_lists_the_claims_a_pattern_needs():
    assert UsernamePattern().claims == ("sub",)
    assert UsernamePattern("[providerId]_[upn]_[sub]").claims == ("upn", "sub")


# -- missing and unusable claims ---------------------------------------------------------------


def test_missing_claim_names_the_claim_and_is_a_403():
    pattern = UsernamePattern("[providerId]_[edu_person_principal_name]")
    with pytest.raises(MissingClaim) as err:
        pattern.render({"sub": AAF_SUB}, "aaf")
    assert err.value.claim == "edu_person_principal_name"
    assert err.value.status_code == 403
    assert "edu_person_principal_name" in err.value.user_message


@pytest.mark.parametrize("value", [None, "", "   ", "null"])
def test_blank_and_null_count_as_missing(value):
    with pytest.raises(MissingClaim):
        UsernamePattern().render({"sub": value}, "aaf")


@pytest.mark.parametrize(
    "value, kind",
    [
        (["staff@uq.edu.au", "member@uq.edu.au"], "list"),
        ({"a": 1}, "JSON object"),
        (True, "boolean"),
        (1.5, "non-integer number"),
    ],
)
def test_values_that_cannot_be_a_username_are_refused(value, kind):
    with pytest.raises(UnusableClaim) as err:
        UsernamePattern("[providerId]_[x]").render({"x": value}, "aaf")
    assert err.value.claim == "x"
    assert err.value.kind == kind
    assert err.value.status_code == 403


def test_empty_provider_id_is_a_config_error():
    with pytest.raises(ConfigError):
        UsernamePattern().render({"sub": "a"}, "")


# -- config-time validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, hint",
    [
        ("[providerId]_[sub", "never closed"),
        ("[providerId]_sub]", "closes no placeholder"),
        ("[providerId]_[[sub]]", "cannot nest"),
        ("[providerId]_[]", "empty placeholder"),
        ("[providerId]_[  ]", "empty placeholder"),
        ("[providerId]_[given name]", "whitespace"),
        ("jupyter-user", "no [claim] placeholder"),
        ("[providerId]", "names no claim"),
        ("[providerId]_user", "names no claim"),
    ],
)
def test_bad_patterns_are_refused_at_config_time(pattern, hint):
    with pytest.raises(ConfigError) as err:
        UsernamePattern(pattern)
    assert hint in str(err.value)
    assert repr(pattern) in str(err.value)


def test_error_says_where_the_bracket_is():
    with pytest.raises(ConfigError, match="position 13"):
        UsernamePattern("[providerId]_[sub")


def test_pattern_must_be_a_string():
    with pytest.raises(ConfigError):
        UsernamePattern(["[sub]"])  # type: ignore[arg-type]


# -- the plugin's placeholder syntax and XNAT's username rule --------------------------------


@pytest.mark.parametrize("name", ["email", "username", "firstName", "lastName"])
def test_placeholders_the_plugin_never_fills_are_refused_at_config_time(name):
    with pytest.raises(ConfigError) as err:
        UsernamePattern(f"[providerId]_[{name}]")
    assert f"never fills [{name}]" in str(err.value)


@pytest.mark.parametrize("name", ["given+name", "café", "a,b", "x=y"])
def test_placeholders_outside_the_plugins_syntax_are_refused(name):
    with pytest.raises(ConfigError, match="not a placeholder XNAT's OpenID plugin recognises"):
        UsernamePattern(f"[providerId]_[{name}]")


@pytest.mark.parametrize("name", ["preferred_username", "https://example.org/upn", "urn:oid:1.3.6", "a-b.c_d"])
def test_placeholders_in_the_plugins_syntax_are_accepted(name):
    assert UsernamePattern(f"[providerId]_[{name}]").claims == (name,)


@pytest.mark.parametrize("name", ["a", "aaf_YAdr3eQ", "o'brien", "j.smith-2", "x" * 64])
def test_names_xnat_can_have(name):
    assert check_xnat_username(name) == name


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "empty"),
        ("1234567890", "does not start with a letter"),
        ("_alice", "does not start with a letter"),
        ("a" * 65, "65 characters"),
        ("ébé", "does not start with a letter"),
    ],
)
def test_names_xnat_cannot_have_say_why(name, why):
    with pytest.raises(InvalidXnatUsername) as err:
        check_xnat_username(name)
    assert why in str(err.value) and why in err.value.user_message
    assert err.value.status_code == 403


# -- AAF authorisation ----------------------------------------------------------------------------

AAF_CLAIMS = {
    "sub": AAF_SUB,
    "edu_person_scoped_affiliation": ["member@uq.edu.au", "staff@uq.edu.au"],
    "edu_person_entitlement": "urn:mace:aaf.edu.au:ide:research:xnat",
    "schac_home_organization": "uq.edu.au",
}


def test_no_aaf_rules_admit_everyone():
    check_aaf_claims({"sub": AAF_SUB})


def test_scoped_affiliation_matches_without_case():
    check_aaf_claims(AAF_CLAIMS, required_scoped_affiliations=["Staff@UQ.edu.au"])
    with pytest.raises(ClaimNotAllowed) as err:
        check_aaf_claims(AAF_CLAIMS, required_scoped_affiliations=["student@uq.edu.au"])
    assert err.value.claim == "edu_person_scoped_affiliation"
    assert err.value.status_code == 403


def test_entitlement_matches_exactly_and_may_be_a_single_string():
    check_aaf_claims(AAF_CLAIMS, required_entitlements=["urn:mace:aaf.edu.au:ide:research:xnat"])
    with pytest.raises(ClaimNotAllowed):
        check_aaf_claims(AAF_CLAIMS, required_entitlements=["URN:MACE:AAF.EDU.AU:IDE:RESEARCH:XNAT"])


def test_home_organisation():
    check_aaf_claims(AAF_CLAIMS, required_home_organisations=["monash.edu", "UQ.edu.au"])
    with pytest.raises(ClaimNotAllowed):
        check_aaf_claims(AAF_CLAIMS, required_home_organisations=["monash.edu"])


def test_a_single_string_rule_is_one_value_not_its_letters():
    with pytest.raises(ClaimNotAllowed):
        check_aaf_claims({"schac_home_organization": "u"}, required_home_organisations="uq.edu.au")
    check_aaf_claims(AAF_CLAIMS, required_home_organisations="uq.edu.au")
    with pytest.raises(ClaimNotAllowed):
        check_hosted_domain({"hd": "e"}, "example.org")


def test_rules_combine_with_and():
    with pytest.raises(ClaimNotAllowed) as err:
        check_aaf_claims(
            AAF_CLAIMS,
            required_scoped_affiliations=["staff@uq.edu.au"],
            required_home_organisations=["monash.edu"],
        )
    assert err.value.claim == "schac_home_organization"


def test_unreleased_aaf_claim_is_a_missing_claim():
    with pytest.raises(MissingClaim) as err:
        check_aaf_claims({"sub": AAF_SUB}, required_entitlements=["urn:x"])
    assert err.value.claim == "edu_person_entitlement"


def test_malformed_aaf_claim_is_refused():
    with pytest.raises(UnusableClaim):
        check_aaf_claims({"schac_home_organization": 42}, required_home_organisations=["uq.edu.au"])


# -- Google hosted domain -------------------------------------------------------------------------


def test_hosted_domain_claim_is_checked():
    check_hosted_domain({"hd": "Example.ORG"}, ["example.org"])
    with pytest.raises(ClaimNotAllowed) as err:
        check_hosted_domain({"hd": "other.org"}, ["example.org"])
    assert err.value.claim == "hd"


def test_email_suffix_is_never_taken_for_a_hosted_domain():
    claims = {"email": "someone@example.org", "email_verified": True}
    with pytest.raises(ClaimNotAllowed):
        check_hosted_domain(claims, ["example.org"])


def test_no_allowed_domains_means_no_check():
    check_hosted_domain({}, [])
    check_hosted_domain({}, ["  "])


# -- properties -----------------------------------------------------------------------------------

_ALLOWED_CHARS = string.ascii_letters + string.digits + "-_'."


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: s.strip() and s != "null"))
def test_any_sub_maps_to_a_valid_xnat_name_of_the_same_length(sub):
    name = UsernamePattern().render({"sub": sub}, "aaf")
    assert XNAT_CHARS.match(name)
    assert name == "aaf_" + "".join(c if c in _ALLOWED_CHARS else "_" for c in sub)
    assert len(name) == 4 + len(sub)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALLOWED_CHARS, min_size=1, max_size=60).filter(lambda s: s != "null"))
def test_subs_of_allowed_characters_pass_through_unchanged(sub):
    assert UsernamePattern().render({"sub": sub}, "aaf") == "aaf_" + sub


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="[]ab_ .:x", max_size=20))
def test_any_pattern_is_either_refused_at_config_time_or_renders(pattern):
    try:
        parsed = UsernamePattern(pattern)
    except ConfigError:
        return
    claims = {name: "Value-" + str(i) for i, name in enumerate(parsed.claims)}
    name = parsed.render(claims, "pid")
    assert XNAT_CHARS.match(name)
    assert name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50))
def test_sanitize_is_idempotent_and_length_preserving(text):
    once = sanitize_username(text)
    assert sanitize_username(once) == once
    assert len(once) == len(text)
