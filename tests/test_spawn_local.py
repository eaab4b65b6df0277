"""Local-process adapter (the demo): the plan as environment and links into the emulator's archive."""

from __future__ import annotations

import os

import pytest
from jupyterhub.spawner import SimpleLocalProcessSpawner

from spawn_hooks import local
from spawn_hooks.errors import SpawnRefused
from tests.world.spawn_fakes import (
    FakeHub,
    FakeOrmSpawner,
    FakeUser,
    add_service_account,
    hooks_config,
    user_auth_state,
)


@pytest.fixture
def world(xnat):
    add_service_account(xnat)
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    xnat.add_project("PA", readers=["alice"])
    xnat.add_project("PB", readers=["alice"])
    return xnat


def local_spawner(xnat, tmp_path, username="alice", name="", user_options=None, token=...):
    config = hooks_config(xnat, local_data_root=str(tmp_path / "links"), allowed_images=["*"])
    config.SimpleLocalProcessSpawner.pre_spawn_hook = local.pre_spawn_hook
    if token is ...:
        token = xnat.mint_token(username)
    state = user_auth_state(xnat.url, username, token) if token else None
    spawner = SimpleLocalProcessSpawner(
        config=config, user=FakeUser(username, state), hub=FakeHub(), orm_spawner=FakeOrmSpawner(name)
    )
    spawner.user_options = user_options or {}
    return spawner


async def test_hub_started_server_links_each_project_and_the_workspace(world, tmp_path):
    spawner = local_spawner(world, tmp_path)
    await spawner.run_pre_spawn_hook()
    base = tmp_path / "links" / "alice"
    for pid in ("PA", "PB"):
        for sub, src in (("experiments", "arc001"), ("resources", "resources"), ("subjects", "subjects")):
            link = base / "data" / "projects" / pid / sub
            assert link.is_symlink()
            assert os.path.realpath(link) == os.path.realpath(world.archive_root / pid / src)
    ws = base / "workspace" / "alice"
    assert os.path.realpath(ws) == os.path.realpath(world.workspace_root / "users" / "alice")
    env = spawner.get_env()
    assert env["XNAT_DATA"] == str(base / "data")
    assert env["JUPYTERHUB_ROOT_DIR"] == str(base)
    assert env["XDG_CONFIG_HOME"] == str(ws)
    assert world.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == "alice"
    assert (base / "data" / "projects" / "PA" / "resources" / "README.txt").read_text().startswith("Project PA")


async def test_the_next_launch_replaces_the_links_and_environment(world, tmp_path):
    stored = world.store_user_options("alice", "", project_id="PB")
    spawner = local_spawner(world, tmp_path, user_options={"projectId": "PB",
                                                           "eventTrackingId": stored["eventTrackingId"]})
    await spawner.run_pre_spawn_hook()
    assert "XNAT_XSI_TYPE" in spawner.environment
    spawner.user_options = {}
    world.revoke_access("alice", "PB")
    await spawner.run_pre_spawn_hook()
    projects = tmp_path / "links" / "alice" / "data" / "projects"
    assert sorted(p.name for p in projects.iterdir()) == ["PA"]
    # removing old links never touched the data they pointed to
    assert (world.archive_root / "PB" / "resources" / "README.txt").exists()
    assert "XNAT_XSI_TYPE" not in spawner.environment


async def test_xnat_launched_named_server_has_its_own_directory(world, tmp_path):
    stored = world.store_user_options("alice", "xnat-1", project_id="PB")
    spawner = local_spawner(world, tmp_path, name="xnat-1",
                            user_options={"projectId": "PB", "eventTrackingId": stored["eventTrackingId"]})
    await spawner.run_pre_spawn_hook()
    base = tmp_path / "links" / "alice" / "xnat-1"
    assert sorted(p.name for p in (base / "data" / "projects").iterdir()) == ["PB"]
    assert spawner.get_env()["XNAT_XSI_TYPE"] == "xnat:projectData"


async def test_refusal_leaves_no_links(world, tmp_path):
    spawner = local_spawner(world, tmp_path, token=None)
    with pytest.raises(SpawnRefused) as err:
        await spawner.run_pre_spawn_hook()
    assert err.value.reason == "token_expired"
    assert not (tmp_path / "links").exists()


async def test_the_links_directory_is_private_and_never_followed_through_a_planted_link(world, tmp_path):
    victim = tmp_path / "hub-files"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    # another local user planted the links root as a link to the hub's files
    (tmp_path / "links").symlink_to(victim)
    spawner = local_spawner(world, tmp_path)
    with pytest.raises(SpawnRefused) as err:
        await spawner.run_pre_spawn_hook()
    assert err.value.reason == "config"
    assert (victim / "precious").read_text() == "keep me" and list(victim.iterdir()) == [victim / "precious"]
    (tmp_path / "links").unlink()

    await local_spawner(world, tmp_path).run_pre_spawn_hook()
    assert oct((tmp_path / "links").stat().st_mode & 0o777) == "0o700"
    # a link planted where the previous launch's data/ was is removed, not followed
    base = tmp_path / "links" / "alice"
    import shutil

    shutil.rmtree(base / "data")
    (base / "data").symlink_to(victim)
    await local_spawner(world, tmp_path).run_pre_spawn_hook()
    assert (victim / "precious").read_text() == "keep me"
    assert (base / "data").is_dir() and not (base / "data").is_symlink()


async def test_a_local_process_takes_no_command_and_no_loader_variables_from_xnat(world, tmp_path, caplog):
    stored = world.store_user_options("alice", "", project_id="PA", compute_environment={
        "environmentVariables": [{"key": "LD_PRELOAD", "value": "/tmp/x.so"}, {"key": "PATH", "value": "/tmp"},
                                 {"key": "OMP_NUM_THREADS", "value": "2"}]})
    launch = {"projectId": "PA", "eventTrackingId": stored["eventTrackingId"]}
    spawner = local_spawner(world, tmp_path, user_options=launch)
    with caplog.at_level("WARNING", logger="spawn_hooks"):
        await spawner.run_pre_spawn_hook()
    assert spawner.environment["OMP_NUM_THREADS"] == "2"
    assert "LD_PRELOAD" not in spawner.environment and spawner.environment.get("PATH") != "/tmp"
    assert "dropped" in caplog.text

    stored = world.store_user_options("alice", "", project_id="PA", dashboard_command="voila app.ipynb")
    spawner = local_spawner(world, tmp_path, user_options={"projectId": "PA",
                                                           "eventTrackingId": stored["eventTrackingId"]})
    with pytest.raises(SpawnRefused) as err:
        await spawner.run_pre_spawn_hook()
    assert err.value.reason == "unsupported" and "command" in err.value.jupyterhub_message
