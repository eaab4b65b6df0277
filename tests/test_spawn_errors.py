"""SpawnRefused on both JupyterHub majors the package supports.

JupyterHub 6 has ``SpawnException``; 5 (CI's oldest leg) has not, and there the refusal is a plain
tornado ``HTTPError`` whose ``log_message`` tornado 6.6 made read-only. The real hubs of both legs
show the refusal end to end (tests/test_spawn_docker.py); this pins the two classes down.
"""

from __future__ import annotations

import importlib.util

import jupyterhub.spawner
import pytest
from tornado import web

import spawn_hooks.errors

SECRET = "s3cr3t-token-value"


def errors_module_without_spawn_exception(monkeypatch):
    """spawn_hooks.errors as JupyterHub 5 loads it, in a module of its own."""
    monkeypatch.delattr(jupyterhub.spawner, "SpawnException", raising=False)
    spec = importlib.util.spec_from_file_location("spawn_hooks_errors_on_jupyterhub_5", spawn_hooks.errors.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("jupyterhub_major", [5, 6])
def test_the_user_reads_one_sentence_and_the_log_gets_the_detail(monkeypatch, jupyterhub_major):
    if jupyterhub_major == 5:
        errors = errors_module_without_spawn_exception(monkeypatch)
    elif not hasattr(jupyterhub.spawner, "SpawnException"):
        pytest.skip("this JupyterHub has no SpawnException (the oldest leg): case 5 covers it")
    else:
        errors = spawn_hooks.errors
    refused = errors.SpawnRefused("xnat_unavailable", log_detail="GET /data/projects: ConnectError")
    user_sentence = errors.REASONS["xnat_unavailable"][1]
    assert isinstance(refused, web.HTTPError) and refused.status_code == 503
    assert refused.jupyterhub_message == user_sentence
    assert str(refused) == refused.log_text == "spawn refused (xnat_unavailable): GET /data/projects: ConnectError"
    if jupyterhub_major == 5:
        # JupyterHub 5's REST API answers with `log_message % args`
        assert refused.log_message % refused.args == user_sentence
    else:
        assert isinstance(refused, jupyterhub.spawner.SpawnException)
        assert refused.message == user_sentence and refused.reason == "xnat_unavailable"


def test_a_percent_sign_in_the_detail_survives_on_jupyterhub_5(monkeypatch):
    errors = errors_module_without_spawn_exception(monkeypatch)
    refused = errors.SpawnRefused("invalid_launch_options", "field 100% wrong")
    assert refused.log_message % refused.args == errors.REASONS["invalid_launch_options"][1] + ": field 100% wrong."
