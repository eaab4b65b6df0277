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
