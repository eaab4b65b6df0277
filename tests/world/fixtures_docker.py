"""Fixtures for a real Docker engine with Swarm and a locally built single-user image.

In CI (``CI=true``) an engine must start: a missing dockerd or a failed start fails the run.
Elsewhere the tests that need one are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from . import notebook_image
from .docker_engine import DockerEngine, EngineUnavailable, why_unavailable


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    if in_ci():
        pytest.fail(f"CI must run the Docker tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine():
    """A private dockerd (host networking only) with a one-node swarm on 127.0.0.1."""
    reason = why_unavailable()
    if reason:
        _unavailable(reason)
    engine = DockerEngine()
    try:
        engine.start()
        engine.swarm_init()
    except Exception as e:  # noqa: BLE001 - any start failure means "no engine here"
        engine.stop()
        if isinstance(e, EngineUnavailable):
            _unavailable(str(e))
        raise
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def notebook_image_name(docker_engine):
    """The single-user image, built in the engine (jupyterhub-singleuser needs jupyter_server)."""
    if importlib.util.find_spec("jupyter_server") is None:
        _unavailable("jupyter_server is not installed (the test extra)")
    return notebook_image.build(docker_engine.client)
