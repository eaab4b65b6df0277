"""(issuer, sub) bound to the hub user at its first login, in a SQLite file that outlives the hub."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xnat_oauth.auth_state import Identity
from xnat_oauth.identity_bindings import IdentityBindings
from xnat_oauth.oidc.errors import IdentityConflict

AAF = "https://central.aaf.edu.au"
GOOGLE = "https://accounts.google.com"


def ident(sub, issuer=AAF, provider="aaf"):
    return Identity(provider, issuer, sub)


@pytest.fixture
def store(tmp_path):
    s = IdentityBindings(tmp_path / "state" / "xnat-oauth.sqlite")
    yield s
    s.close()


def test_first_login_binds_and_the_same_login_agrees(store):
    assert store.bind(ident("alice@x"), "aaf_alice_x") is True
    assert store.bind(ident("alice@x"), "aaf_alice_x") is False
    store.check(ident("alice@x"), "aaf_alice_x")


def test_two_subjects_rendering_one_name_never_share_an_account(store):
    store.bind(ident("alice@x"), "aaf_alice_x")
    with pytest.raises(IdentityConflict) as err:
        store.bind(ident("alice_x"), "aaf_alice_x")
    assert "'alice@x'" in str(err.value) and "'alice_x'" in str(err.value), "names both"
    assert "aaf_alice_x" in err.value.user_message
    assert [b.sub for b in store.of_user("aaf_alice_x")] == ["alice@x"]


def test_an_identity_stays_with_its_account(store):
    store.bind(ident("s1"), "aaf_s1")
    with pytest.raises(IdentityConflict, match="bindings release aaf_s1"):
        store.check(ident("s1"), "jsmith")


def test_one_account_may_have_one_subject_of_each_provider(store):
    store.bind(ident("s1"), "jsmith")
    store.bind(ident("g-123", GOOGLE, "google"), "jsmith")  # XNAT linked both to jsmith
    assert {b.provider for b in store.of_user("jsmith")} == {"aaf", "google"}


def test_bindings_survive_a_restart_and_an_admin_can_release_them(tmp_path):
    path = tmp_path / "xnat-oauth.sqlite"
    first = IdentityBindings(path)
    first.bind(ident("s1"), "aaf_s1")
    first.close()
    again = IdentityBindings(path)
    with pytest.raises(IdentityConflict):
        again.check(ident("s2"), "aaf_s1")
    again.close()

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "xnat_oauth.cli", "bindings", "--state-file", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("list")
    assert listed.returncode == 0 and listed.stdout.split("\t")[:2] == ["aaf_s1", "aaf"]
    released = cli("release", "aaf_s1")
    assert released.returncode == 0 and "released 1 identity of aaf_s1" in released.stdout
    assert cli("release", "aaf_s1").returncode == 1
    IdentityBindings(path).check(ident("s2"), "aaf_s1")  # free again
