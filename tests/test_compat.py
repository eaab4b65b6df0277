"""Each workaround in ``xnat_oauth.compat`` is checked against the JupyterHub installed here:
these tests fail once upstream no longer has the bug, so the workaround can be deleted."""

from __future__ import annotations

import inspect

import jupyterhub
from jupyterhub.handlers.base import BaseHandler
from packaging.version import Version

from xnat_oauth import compat

JUPYTERHUB = Version(jupyterhub.__version__)


def test_the_refresh_auth_workaround_is_still_needed():
    """jupyterhub/jupyterhub#5500 (6.1.0) reads an attribute cookie requests never get."""
    reads = compat.REFRESH_AUTH_ATTRIBUTE in inspect.getsource(BaseHandler.refresh_auth)
    has_default = hasattr(BaseHandler, compat.REFRESH_AUTH_ATTRIBUTE)
    if JUPYTERHUB < Version("6.1"):
        assert not reads, "JupyterHub before 6.1 was not expected to read it: look again"
    else:
        assert reads and not has_default, (
            f"JupyterHub {JUPYTERHUB} no longer needs xnat_oauth.compat.allow_refresh_to_ask_for_login: "
            "remove it (and this test)"
        )


def test_the_workaround_fills_in_only_what_is_missing():
    class Handler:
        pass

    cookie, token = Handler(), Handler()
    setattr(token, compat.REFRESH_AUTH_ATTRIBUTE, True)
    compat.allow_refresh_to_ask_for_login(cookie)
    compat.allow_refresh_to_ask_for_login(token)
    compat.allow_refresh_to_ask_for_login(None)
    assert getattr(cookie, compat.REFRESH_AUTH_ATTRIBUTE) is False
    assert getattr(token, compat.REFRESH_AUTH_ATTRIBUTE) is True


def test_the_cross_user_refresh_workaround_is_needed_exactly_before_jupyterhub_6_1():
    """jupyterhub/jupyterhub#5500 (6.1.0) keeps stale auth for a request made on another user's
    behalf; before it, a False from refresh_user refuses XNAT's launches with 403."""
    from jupyterhub.auth import Authenticator

    keeps_it = "cross-user" in inspect.getsource(BaseHandler.refresh_auth)
    active = not hasattr(Authenticator, "auth_refresh_strict")
    assert keeps_it is not active, f"JupyterHub {JUPYTERHUB}: the workaround's test of the version is wrong"
    if JUPYTERHUB < Version("6.1"):
        assert active, "JupyterHub before 6.1 was expected to refuse cross-user spawns on a failed refresh"


def test_the_cross_user_workaround_answers_for_other_requesters_only():
    class Named:
        def __init__(self, name):
            self.name = name

    class Handler:
        def __init__(self, requester):
            self._requester = requester

        @property
        def current_user(self):
            if self._requester is ...:
                raise RuntimeError("Must call async get_current_user first!")
            return self._requester

    class OldAuthenticator:  # JupyterHub 5: no auth_refresh_strict
        pass

    class NewAuthenticator:
        auth_refresh_strict = False

    alice = Named("alice")
    old, new = OldAuthenticator(), NewAuthenticator()
    assert compat.refresh_cannot_ask_for_login(old, Handler(Named("xnat-service")), alice)
    assert not compat.refresh_cannot_ask_for_login(old, Handler(Named("alice")), alice)
    assert not compat.refresh_cannot_ask_for_login(old, Handler(...), alice)  # her own request, still in prepare
    assert not compat.refresh_cannot_ask_for_login(old, None, alice)
    assert not compat.refresh_cannot_ask_for_login(new, Handler(Named("xnat-service")), alice)
