"""xnat_oauth and spawn_hooks use only public names of oauthenticator and JupyterHub.

A private name is one that starts with an underscore: oauthenticator and JupyterHub may change
it in any release, and a login would then break silently. The one sanctioned exception is
``xnat_oauth/compat.py``, where each workaround names its upstream issue (tests/test_compat.py).
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

import dockerspawner
import jupyterhub.auth
import jupyterhub.handlers.base
import jupyterhub.handlers.login
import jupyterhub.spawner
import jupyterhub.user
import kubespawner
import oauthenticator.generic
import oauthenticator.oauth2
import pytest

import spawn_hooks
import xnat_oauth

UPSTREAM_PACKAGES = ("jupyterhub", "oauthenticator", "dockerspawner", "kubespawner")
UPSTREAM_CLASSES = [
    oauthenticator.oauth2.OAuthenticator,
    oauthenticator.generic.GenericOAuthenticator,
    oauthenticator.oauth2.OAuthLoginHandler,
    oauthenticator.oauth2.OAuthCallbackHandler,
    oauthenticator.oauth2.OAuthLogoutHandler,
    jupyterhub.auth.Authenticator,
    jupyterhub.handlers.base.BaseHandler,
    jupyterhub.handlers.login.LogoutHandler,
    jupyterhub.user.User,
    jupyterhub.spawner.Spawner,
    dockerspawner.DockerSpawner,
    dockerspawner.SwarmSpawner,
    kubespawner.KubeSpawner,
]
SANCTIONED = {"compat.py"}


def _sources() -> list[Path]:
    files = []
    for pkg in (xnat_oauth, spawn_hooks):
        root = Path(pkg.__file__).parent
        files += [p for p in sorted(root.rglob("*.py")) if p.name not in SANCTIONED]
    return files


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")  # dunders are Python's


@functools.lru_cache(maxsize=1)
def _upstream_private_names() -> frozenset[str]:
    """Underscore names upstream classes define or use on ``self`` (instance attributes too)."""
    names, modules = set(), set()
    for cls in UPSTREAM_CLASSES:
        for klass in inspect.getmro(cls):
            if klass.__module__.split(".")[0] in UPSTREAM_PACKAGES:
                names |= {n for n in vars(klass) if _private(n)}
                modules.add(inspect.getmodule(klass))
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
    return frozenset(names)


def _own_names(tree: ast.AST) -> set[str]:
    """Underscore names this module defines itself (its own attributes and methods)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return own


@pytest.mark.parametrize("path", _sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_private_name_of_upstream(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    private = _upstream_private_names() - _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UPSTREAM_PACKAGES:
            found += [f"import {a.name} from {node.module}" for a in node.names if a.name.startswith("_")]
            if any(part.startswith("_") for part in (node.module or "").split(".")):
                found.append(f"import from {node.module}")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UPSTREAM_PACKAGES and "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private:
            found.append(f"line {node.lineno}: {node.value!r} (getattr/hasattr/setattr)")
    assert not found, f"{path.name} uses private names of upstream packages: {found}"


def test_the_scan_sees_what_it_must_refuse(tmp_path):
    """The scanner itself catches the patterns issue #8 removed (so the test above can fail)."""
    bad = (
        "from oauthenticator.oauth2 import _serialize_state\n"
        "def f(self, handler):\n"
        "    handler._token_authenticated = False\n"
        "    return self._call_modify_auth_state_hook(1)\n"
    )
    tree = ast.parse(bad)
    private = _upstream_private_names()
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in private}
    assert attrs == {"_token_authenticated", "_call_modify_auth_state_hook"}
    assert any(isinstance(n, ast.ImportFrom) and n.names[0].name.startswith("_") for n in ast.walk(tree))


def test_authenticate_is_oauthenticators():
    """oauthenticator documents authenticate() as not to be overridden."""
    assert "authenticate" not in vars(xnat_oauth.XnatOAuthenticator)
    assert xnat_oauth.XnatOAuthenticator.authenticate is oauthenticator.oauth2.OAuthenticator.authenticate
