"""Fixtures: real OpenID providers (AAF-like, Google-like) on 127.0.0.1.

Session-scoped providers are shared: add your own client and fresh accounts to them,
never change what another test registered.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from tests.world.oidc_provider import OidcProvider


@dataclass(frozen=True)
class IdpAccount:
    """An account at a test provider: ``login`` is typed into the login form."""

    login: str
    claims: dict

    @property
    def sub(self) -> str:
        return self.claims["sub"]


def new_login(prefix: str = "user") -> str:
    """A login name no other test uses."""
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def oidc_aaf(tmp_path_factory) -> Iterator[OidcProvider]:
    """An AAF-like provider (edu_person_* claims, offline_access), for the whole session."""
    with OidcProvider(tmp_path_factory.mktemp("oidc-aaf"), profile="aaf") as provider:
        yield provider


@pytest.fixture(scope="session")
def oidc_google(tmp_path_factory) -> Iterator[OidcProvider]:
    """A Google-like provider (email_verified, hd), for the whole session."""
    with OidcProvider(tmp_path_factory.mktemp("oidc-google"), profile="google") as provider:
        yield provider


@pytest.fixture
def aaf_user(oidc_aaf) -> IdpAccount:
    """A fresh AAF account with a random mixed-case 43-character sub."""
    login = new_login("aaf")
    return IdpAccount(login, oidc_aaf.aaf_account(login))


@pytest.fixture
def google_user(oidc_google) -> IdpAccount:
    """A fresh, verified Google account (no hosted domain)."""
    login = new_login("g")
    return IdpAccount(login, oidc_google.google_account(login))


@pytest.fixture
def oidc_provider_factory(tmp_path_factory) -> Iterator[Callable[..., OidcProvider]]:
    """Start a provider with custom options (short TTLs, no refresh, ...); stopped after the test.

    ``oidc_provider_factory(profile="generic", id_token_ttl=5)`` takes OidcProvider's keywords.
    """
    started: list[OidcProvider] = []

    def start(**options) -> OidcProvider:
        provider = OidcProvider(tmp_path_factory.mktemp("oidc"), **options).start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()
