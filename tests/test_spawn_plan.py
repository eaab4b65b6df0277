"""The spawn plan: settings, both sources, hostile launch options, XNAT failures at spawn time.

Pure builders are tested on XNAT's documented shapes; ``build_plan`` runs against the real
XNAT emulator on 127.0.0.1 (fixture ``xnat``) with a stand-in spawner.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time

import pytest
from traitlets import TraitError
from traitlets.config import Config

from spawn_hooks.build import build_plan
from spawn_hooks.config import XnatSpawnHooks
from spawn_hooks.errors import PlanError, SpawnRefused
from spawn_hooks.plan import (
    Rules,
    is_xnat_launch,
    parse_mem,
    plan_from_launch,
    plan_from_projects,
)
from tests.world.spawn_fakes import (
    FakeAuthenticator,
    FakeSpawner,
    FakeUser,
    add_service_account,
    expiring_token,
    hooks_config,
    user_auth_state,
)
from xnat_oauth.auth_state import XnatAuthState

SECRET = "ogHnbC7559jczcWz0Y1jDhHlUpy4AxI8EW6EjYAdArItPGf7FLXJP1OYam68MNQa"

# reference/xnat/01_user_options_response.json (without _comment)
REFERENCE_OPTIONS = {
    "userId": 2,
    "servername": "",
    "xsiType": "xnat:projectData",
    "itemId": "TestProject",
    "projectId": "TestProject",
    "eventTrackingId": "20220822T201541799Z",
    "task_template": {
        "container_spec": {
            "image": "xnat/datascience-notebook:latest",
            "command": None,
            "env": {
                "XNAT_HOST": "https://xnat.example.org",
                "XNAT_USER": "61e4f5db-33e0-4f06-86e7-a59217d65f5c",
                "XNAT_PASS": SECRET,
                "XNAT_DATA": "/data",
                "XNAT_XSI_TYPE": "xnat:projectData",
                "XNAT_ITEM_ID": "TestProject",
                "JUPYTERHUB_ROOT_DIR": "/workspace/non-admin",
                "XDG_CONFIG_HOME": "/workspace/non-admin",
            },
            "labels": {},
            "mounts": [
                {"target": "/workspace/non-admin", "source": "/docker/data/xnat/workspaces/users/non-admin",
                 "type": "bind", "read_only": False},
                {"target": "/data/projects/TestProject/experiments",
                 "source": "/docker/data/xnat/archive/TestProject/arc001", "type": "bind", "read_only": True},
                {"target": "/data/projects/TestProject/resources",
                 "source": "/docker/data/xnat/archive/TestProject/resources", "type": "bind", "read_only": True},
                {"target": "/data/projects/TestProject/subjects",
                 "source": "/docker/data/xnat/archive/TestProject/subjects", "type": "bind", "read_only": True},
            ],
        },
        "resources": {"cpu_limit": 4.0, "cpu_reservation": 4.0, "mem_limit": "16G", "mem_reservation": "16G",
                      "generic_resources": {}},
        "placement": {"constraints": ["engine.labels.instance.type==jupyter"]},
    },
}
# what XNAT POSTs to the hub (reference 02): the hub's user_options
LAUNCH = {"userId": 2, "xsiType": "xnat:projectData", "itemId": "TestProject", "itemLabel": "TestProject",
          "projectId": "TestProject", "eventTrackingId": "20220822T201541799Z", "dashboardConfigId": None}
# reference 10: the older shape xnat2jupyterhub 0.2 read
LEGACY_OPTIONS = {
    "mounts": [
        {"name": "user-workspace", "containerHostPath": "/data/xnat/workspaces/users/jdoe",
         "jupyterHostPath": "/workspace/jdoe", "writable": True},
        {"name": "project-TEST", "containerHostPath": "/data/xnat/archive/TEST/arc001",
         "jupyterHostPath": "/data/projects/TEST/experiments", "writable": False},
    ],
    "environment-variables": {"XNAT_HOST": "https://xnat.example.org", "XNAT_USER": "a", "XNAT_PASS": "b",
                              "XNAT_XSI_TYPE": "xnat:projectData", "XNAT_ITEM_ID": "TEST"},
    "container-spec": {"image": "jupyter/scipy-notebook:hub-3.0.0", "labels": {}},
}


def rules(**kw) -> Rules:
    base = dict(
        archive_prefix="/data/xnat/archive",
        archive_host_prefix="/docker/data/xnat/archive",
        workspace_prefix="/data/xnat/workspaces",
        workspace_host_prefix="/docker/data/xnat/workspaces",
        archive_root="/docker/data/xnat/archive",
        workspace_root="/docker/data/xnat/workspaces",
        allowed_images=("xnat/datascience-notebook:latest", "jupyter/scipy-notebook:hub-3.0.0"),
    )
    base.update(kw)
    return Rules(**base)


def launch_plan(options=None, *, username="non-admin", servername="", launch=LAUNCH, **kw):
    return plan_from_launch(
        copy.deepcopy(REFERENCE_OPTIONS if options is None else options),
        rules=rules(**kw),
        username=username,
        servername=servername,
        launch=launch,
        spawner_image="example/notebook:1",
    )


# -- settings ---------------------------------------------------------------------------------


def test_settings_default_from_the_original_environment_variables(monkeypatch):
    monkeypatch.setenv("JH_XNAT_URL", "https://xnat.example.org")
    monkeypatch.setenv("JH_XNAT_USERNAME", "svc")
    monkeypatch.setenv("JH_XNAT_PASSWORD", "pw")
    monkeypatch.setenv("JH_XNAT_PT_ARCHIVE_PREFIX", "/data/xnat/archive")
    monkeypatch.setenv("JH_XNAT_PT_ARCHIVE_DOCKER_PREFIX", "/docker/archive/")
    monkeypatch.setenv("JH_XNAT_PT_WORKSPACE_PREFIX", "/data/xnat/workspaces")
    monkeypatch.setenv("JH_XNAT_PT_WORKSPACE_DOCKER_PREFIX", "/docker/workspaces")
    monkeypatch.setenv("NB_UID", "54")
    monkeypatch.setenv("NB_GID", "55")
    s = XnatSpawnHooks()
    assert (s.xnat_url, s.service_username, s.service_password) == ("https://xnat.example.org", "svc", "pw")
    assert s.archive_host_prefix == "/docker/archive"  # normalised
    assert (s.archive_root, s.workspace_root) == ("/docker/archive", "/docker/workspaces")
    assert (s.nb_uid, s.nb_gid) == (54, 55)
    assert s.allow_start_without_data is False
    s.check()


def test_settings_come_from_the_hub_config_through_the_spawner(monkeypatch):
    monkeypatch.delenv("JH_XNAT_URL", raising=False)
    c = Config()
    c.XnatSpawnHooks.xnat_url = "https://x.example.org"
    c.XnatSpawnHooks.archive_root = "/mnt/archive"
    c.XnatSpawnHooks.allowed_images = ["a/b:1"]
    spawner = FakeSpawner(config=c)
    s = XnatSpawnHooks.from_spawner(spawner)
    assert (s.xnat_url, s.archive_root, s.allowed_images) == ("https://x.example.org", "/mnt/archive", ["a/b:1"])


@pytest.mark.parametrize(
    "conf",
    [
        {"archive_root": "/"},
        {"archive_root": "/data", "workspace_root": "/data/ws"},
        {"workspace_root": "/srv/x", "archive_root": "/srv/x"},
        {"xnat_url": "ftp://xnat"},
    ],
)
def test_unworkable_settings_are_config_errors(conf):
    from xnat_oauth.errors import ConfigError

    c = Config()
    for k, v in conf.items():
        setattr(c.XnatSpawnHooks, k, v)
    with pytest.raises(ConfigError):
        XnatSpawnHooks(config=c).check()


# -- a server XNAT launched -------------------------------------------------------------------


def test_reference_launch_options_become_the_plan():
    plan = launch_plan()
    assert plan.origin == "xnat"
    assert plan.image == "xnat/datascience-notebook:latest"
    assert [(m.source, m.target, m.read_only, m.kind) for m in plan.mounts] == [
        ("/docker/data/xnat/workspaces/users/non-admin", "/workspace/non-admin", False, "workspace"),
        ("/docker/data/xnat/archive/TestProject/arc001", "/data/projects/TestProject/experiments", True, "archive"),
        ("/docker/data/xnat/archive/TestProject/resources", "/data/projects/TestProject/resources", True, "archive"),
        ("/docker/data/xnat/archive/TestProject/subjects", "/data/projects/TestProject/subjects", True, "archive"),
    ]
    assert plan.env["XNAT_PASS"] == SECRET and plan.env["XNAT_USER"].startswith("61e4f5db")
    r = plan.resources
    assert (r.cpu_limit, r.cpu_reservation, r.mem_limit, r.mem_reservation) == (4.0, 4.0, 16 * 2**30, 16 * 2**30)
    assert plan.constraints == ("engine.labels.instance.type==jupyter",)
    assert plan.projects == ("TestProject",)


def test_the_plan_never_shows_the_token():
    plan = launch_plan()
    assert SECRET not in repr(plan)
    assert SECRET not in plan.describe()


def test_prefix_translation_from_xnat_paths():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    for m in opts["task_template"]["container_spec"]["mounts"]:
        m["source"] = m["source"].replace("/docker", "")  # XNAT's own view: /data/xnat/...
    plan = launch_plan(opts)
    assert plan.mounts[1].source == "/docker/data/xnat/archive/TestProject/arc001"
    assert plan.workspace.source == "/docker/data/xnat/workspaces/users/non-admin"


def test_data_is_read_only_whatever_xnat_says():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    for m in opts["task_template"]["container_spec"]["mounts"]:
        m["read_only"] = False
    plan = launch_plan(opts)
    assert [m.read_only for m in plan.data_mounts] == [True, True, True]
    assert plan.workspace.read_only is False


def test_legacy_shape_is_understood():
    plan = launch_plan(
        LEGACY_OPTIONS, username="jdoe", launch={"projectId": "TEST"},
        archive_host_prefix="/data/xnat/archive", workspace_host_prefix="/data/xnat/workspaces",
        archive_root="/data/xnat/archive", workspace_root="/data/xnat/workspaces",
    )
    assert plan.image == "jupyter/scipy-notebook:hub-3.0.0"
    assert [(m.target, m.read_only) for m in plan.mounts] == [
        ("/workspace/jdoe", False), ("/data/projects/TEST/experiments", True)]
    assert plan.env["XNAT_ITEM_ID"] == "TEST"


def test_named_server_options_must_be_for_that_server():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["servername"] = "20220822t201541799z"
    assert launch_plan(opts, servername="20220822t201541799z").servername == "20220822t201541799z"
    with pytest.raises(PlanError, match="another server"):
        launch_plan(opts, servername="")


def test_stale_launch_options_are_refused():
    with pytest.raises(PlanError, match="another launch"):
        launch_plan(launch={**LAUNCH, "eventTrackingId": "20990101T000000000Z"})


def test_images_only_from_the_allowed_list():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["task_template"]["container_spec"]["image"] = "evil/miner:latest"
    with pytest.raises(PlanError) as err:
        launch_plan(opts)
    assert err.value.reason == "image_not_allowed"
    # empty list: only the spawner's own image
    with pytest.raises(PlanError):
        launch_plan(allowed_images=())
    opts["task_template"]["container_spec"]["image"] = "example/notebook:1"
    assert launch_plan(opts, allowed_images=()).image == "example/notebook:1"
    assert launch_plan(allowed_images=("*",)).image == "xnat/datascience-notebook:latest"
    # the hub's own user_options cannot pick another image for an XNAT launch
    with pytest.raises(PlanError) as err:
        launch_plan(launch={**LAUNCH, "image": "jupyter/scipy-notebook:hub-3.0.0"})
    assert err.value.reason == "image_not_allowed"


def _with(path, value):
    """REFERENCE_OPTIONS with one nested value replaced (path: keys/indices)."""
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    node = opts
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return opts


CS = ("task_template", "container_spec")
M1 = CS + ("mounts", 1)
HOSTILE_OPTIONS = {
    "not-a-dict": ["task_template"],
    "empty": {},
    "task_template-list": _with(("task_template",), []),
    "mounts-dict": _with(CS + ("mounts",), {"a": 1}),
    "mount-string": _with(CS + ("mounts", 0), "/etc:/etc"),
    "traversal": _with(M1 + ("source",), "/docker/data/xnat/archive/TestProject/../../../../etc"),
    "absolute-escape": _with(M1 + ("source",), "/etc"),
    "docker-socket": _with(M1 + ("source",), "/var/run/docker.sock"),
    "relative": _with(M1 + ("source",), "TestProject/arc001"),
    "whole-archive": _with(M1 + ("source",), "/docker/data/xnat/archive"),
    "look-alike-root": _with(M1 + ("source",), "/docker/data/xnat/archive2/TestProject"),
    "other-workspace": _with(CS + ("mounts", 0, "source"), "/docker/data/xnat/workspaces/users/admin"),
    "odd-chars": _with(M1 + ("source",), "/docker/data/xnat/archive/Test Project;rm -rf/arc001"),
    "braces": _with(M1 + ("source",), "/docker/data/xnat/archive/{pod_name}/arc001"),
    "odd-project": _with(M1 + ("source",), "/docker/data/xnat/archive/..TestProject/arc001"),
    "target-etc": _with(M1 + ("target",), "/etc"),
    "target-traversal": _with(M1 + ("target",), "/data/../etc"),
    "target-duplicate": _with(M1 + ("target",), "/data/projects/TestProject/resources"),
    "volume-type-with-a-path": _with(M1 + ("type",), "volume"),
    "mount-type-tmpfs": _with(M1 + ("type",), "tmpfs"),
    "other-launchs-shared-tree": _with(M1 + ("source",), "/docker/data/xnat/archive/SHARED.PROJECT.DATA.STORAGE."
                                       "DIRECTORY/jupyter-notebooks/20990101T000000000Z"),
    "command-not-a-string": _with(CS + ("command",), {"run": "x"}),
    "command-control-chars": _with(CS + ("command",), "jupyterhub-singleuser --x=\x1b[31m"),
    "command-huge": _with(CS + ("command",), "x " * 10_000),
    "huge-mount-list": _with(CS + ("mounts",), [REFERENCE_OPTIONS["task_template"]["container_spec"]["mounts"][1]] * 10_000),
    "huge-path": _with(M1 + ("source",), "/docker/data/xnat/archive/TestProject/" + "x" * 100_000),
    "env-list": _with(CS + ("env",), ["XNAT_USER=x"]),
    "env-bad-name": _with(CS + ("env", "A-B"), "x"),
    "env-huge-value": _with(CS + ("env", "BIG"), "x" * 1_000_000),
    "env-too-many": _with(CS + ("env",), {f"V{i}": "x" for i in range(5000)}),
    "env-nested": _with(CS + ("env", "X"), {"a": 1}),
    "cpu-negative": _with(("task_template", "resources", "cpu_limit"), -1),
    "cpu-nan": _with(("task_template", "resources", "cpu_limit"), float("nan")),
    "cpu-string": _with(("task_template", "resources", "cpu_limit"), "all"),
    "mem-garbage": _with(("task_template", "resources", "mem_limit"), "16 gigs"),
    "mem-reservation-above-limit": _with(("task_template", "resources", "mem_reservation"), "32G"),
    "gpu-zero": _with(("task_template", "resources", "generic_resources"), {"gpu": 0}),
    "gpu-name": _with(("task_template", "resources", "generic_resources"), {"gpu; rm": 1}),
    "constraint-injection": _with(("task_template", "placement", "constraints"), ["node.role==manager\nx"]),
    "constraint-operator": _with(("task_template", "placement", "constraints"), ["node.labels.a~=b"]),
    "constraints-many": _with(("task_template", "placement", "constraints"), ["a==b"] * 1000),
    "image-odd": _with(CS + ("image",), "Evil Image;rm"),
}


@pytest.mark.parametrize("name", list(HOSTILE_OPTIONS))
def test_hostile_launch_options_are_refused_with_a_clear_message(name):
    with pytest.raises(PlanError) as err:
        launch_plan(HOSTILE_OPTIONS[name])
    msg = err.value.user_message
    assert msg and len(msg) < 200
    for secretish in ("stolen", "/tmp/x.so", "rm -rf", "x" * 50, "/etc"):
        assert secretish not in msg


def test_hostile_username_is_refused():
    with pytest.raises(PlanError):
        launch_plan(username="../admin")


def test_is_xnat_launch():
    assert is_xnat_launch(LAUNCH)
    assert not is_xnat_launch({})
    assert not is_xnat_launch(None)
    assert not is_xnat_launch({"image": "x", "profile": "small"})


@pytest.mark.parametrize("text, n", [("16G", 16 * 2**30), ("512m", 512 * 2**20), ("1.5g", int(1.5 * 2**30)),
                                     ("1Gi", 2**30), (1024, 1024), ("2048", 2048), ("10KB", 10240)])
def test_memory_sizes(text, n):
    assert parse_mem(text, "mem") == n


# -- a server started from the hub ------------------------------------------------------------


def hub_plan(ids, **kw):
    return plan_from_projects(
        ids, rules=rules(), username="aaf_YAdr3eQ", servername="", xnat_host="https://xnat.example.org",
        token_alias="alias-1", token_secret=SECRET, **kw)


def test_projects_become_read_only_mounts_and_the_workspace_is_writable():
    plan = hub_plan(["P2", "P1"])
    assert plan.origin == "hub"
    assert plan.workspace.source == "/docker/data/xnat/workspaces/users/aaf_YAdr3eQ"
    assert plan.workspace.target == "/workspace/aaf_YAdr3eQ" and not plan.workspace.read_only
    assert [(m.source, m.target) for m in plan.data_mounts] == [
        ("/docker/data/xnat/archive/P1/arc001", "/data/projects/P1/experiments"),
        ("/docker/data/xnat/archive/P1/resources", "/data/projects/P1/resources"),
        ("/docker/data/xnat/archive/P1/subjects", "/data/projects/P1/subjects"),
        ("/docker/data/xnat/archive/P2/arc001", "/data/projects/P2/experiments"),
        ("/docker/data/xnat/archive/P2/resources", "/data/projects/P2/resources"),
        ("/docker/data/xnat/archive/P2/subjects", "/data/projects/P2/subjects"),
    ]
    assert all(m.read_only for m in plan.data_mounts)
    assert {k: plan.env[k] for k in ("XNAT_HOST", "XNAT_USER", "XNAT_PASS", "XNAT_DATA")} == {
        "XNAT_HOST": "https://xnat.example.org", "XNAT_USER": "alias-1", "XNAT_PASS": SECRET, "XNAT_DATA": "/data"}
    assert plan.image is None


@pytest.mark.parametrize("bad", ["../P1", "P1/../../etc", "/etc", "P 1", "{x}", "P" * 500, None, 5])
def test_hostile_project_ids_from_xnat_are_refused(bad):
    with pytest.raises(PlanError, match="invalid project id"):
        hub_plan(["P1", bad])


def test_too_many_projects_is_refused():
    with pytest.raises(PlanError, match="too many"):
        hub_plan([f"P{i}" for i in range(1000)])


def test_hub_user_options_may_only_pick_allowed_images():
    assert hub_plan(["P1"], requested_image="jupyter/scipy-notebook:hub-3.0.0").image == "jupyter/scipy-notebook:hub-3.0.0"
    with pytest.raises(PlanError) as err:
        hub_plan(["P1"], requested_image="evil/image:1")
    assert err.value.reason == "image_not_allowed"


# -- build_plan against the emulator ----------------------------------------------------------


@pytest.fixture
def world(xnat):
    add_service_account(xnat)
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    xnat.add_user("bob", "bob-pw", roles=["Jupyter"])
    xnat.add_project("PA", readers=["alice"])
    xnat.add_project("PB", readers=["alice", "bob"])
    return xnat


def spawner_for(xnat, username, *, token=..., user_options=None, name="", authenticator=None, **conf):
    if token is ...:
        token = xnat.mint_token(username)
    state = user_auth_state(xnat.url, username, token) if token is not None else None
    return FakeSpawner(
        config=hooks_config(xnat, **conf),
        user=FakeUser(username, state, authenticator),
        user_options=user_options or {},
        name=name,
    )


async def test_hub_started_server_mounts_the_users_projects_in_one_xnat_session(world):
    spawner = spawner_for(world, "alice")
    plan = await build_plan(spawner)
    assert plan.origin == "hub" and plan.projects == ("PA", "PB")
    # the listing, then one read check per listed project, then the server's own token: all in
    # one session of the login token
    assert world.count("projects") == 1 and world.count("project_subjects") == 2 and world.count() == 4
    assert world.count("tokens.issue") == 1
    assert world.sessions_opened == {"alice": 1}
    assert [c.auth_kind for c in world.calls] == ["basic-token", "session", "session", "session"]
    # the workspace was created, without a shell, where XNAT keeps it
    assert (world.workspace_root / "users" / "alice").is_dir()
    # the notebook's token is the user's own, minted for this server: not the login token
    assert world.token_owner(plan.env["XNAT_USER"], plan.env["XNAT_PASS"]) == "alice"
    login = XnatAuthState.from_auth_state(await spawner.user.get_auth_state()).token
    assert plan.env["XNAT_USER"] != login.alias and login.secret not in plan.env.values()


async def test_bob_gets_only_his_project(world):
    plan = await build_plan(spawner_for(world, "bob"))
    assert plan.projects == ("PB",)


async def test_missing_archive_directories_are_not_mounted(world):
    import shutil

    shutil.rmtree(world.archive_root / "PA" / "subjects")
    plan = await build_plan(spawner_for(world, "alice"))
    targets = [m.target for m in plan.mounts]
    assert "/data/projects/PA/subjects" not in targets and "/data/projects/PA/resources" in targets


async def test_a_symlink_out_of_the_archive_refuses_the_spawn(world, tmp_path):
    import shutil

    shutil.rmtree(world.archive_root / "PA" / "resources")
    (world.archive_root / "PA" / "resources").symlink_to(tmp_path)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice"))
    assert err.value.reason == "invalid_launch_options"
    assert "link" in err.value.jupyterhub_message


async def test_xnat_launched_default_and_named_servers(world):
    stored = world.store_user_options("alice", "", project_id="PA")
    launch = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}
    plan = await build_plan(spawner_for(world, "alice", user_options=launch, allowed_images=["*"]))
    assert plan.origin == "xnat" and plan.projects == ("PA",)
    assert plan.image == "xnat/datascience-notebook:latest"
    assert plan.mounts[1].source == f"{world.archive_root}/PA/arc001"
    assert world.count("user_options") == 1 and world.count() == 1
    # the token in the notebook is the one XNAT minted for alice
    assert world.token_owner(plan.env["XNAT_USER"], plan.env["XNAT_PASS"]) == "alice"

    stored = world.store_user_options("alice", "20240101t000000000z", project_id="PB")
    launch = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}
    plan = await build_plan(spawner_for(world, "alice", user_options=launch, name="20240101t000000000z",
                                        allowed_images=["*"]))
    assert plan.projects == ("PB",) and plan.servername == "20240101t000000000z"
    paths = [c.path_redacted for c in world.calls if c.endpoint == "user_options"]
    assert {c.user for c in world.calls if c.endpoint == "user_options"} == {"jupyterhub"}
    assert paths[-1].endswith("/users/alice/server/20240101t000000000z/user-options")
    assert paths[0].endswith("/users/alice/server/user-options") and "//" not in paths[0]


async def test_xnat_launch_needs_no_auth_state(world):
    stored = world.store_user_options("alice", "", project_id="PA")
    launch = {"projectId": "PA", "eventTrackingId": stored["eventTrackingId"]}
    plan = await build_plan(spawner_for(world, "alice", token=None, user_options=launch, allowed_images=["*"]))
    assert plan.origin == "xnat"


async def test_launch_options_not_found(world):
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", user_options={"projectId": "PA", "eventTrackingId": "x"}))
    assert err.value.reason == "launch_options_not_found"
    assert "start it again from XNAT" in err.value.jupyterhub_message


@pytest.mark.parametrize("name", ["traversal", "other-workspace", "env-bad-name", "huge-mount-list", "cpu-nan"])
async def test_hostile_stored_options_refuse_the_spawn_even_with_allow_start_without_data(world, name):
    raw = json.loads(json.dumps(HOSTILE_OPTIONS[name]).replace("/docker/data/xnat", "/data/xnat")
                     .replace("non-admin", "alice").replace("TestProject", "PA"))
    world.store_user_options("alice", "", raw=raw)
    spawner = spawner_for(world, "alice", user_options={"projectId": "PA"}, allowed_images=["*"],
                          allow_start_without_data=True)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner)
    assert err.value.reason == "invalid_launch_options"
    assert err.value.jupyterhub_message.startswith("The hub refused XNAT's launch settings")


@pytest.mark.parametrize(
    "fault, kwargs",
    [("drop", {}), ("error", {"status": 503}), ("html", {}), ("garbage", {}), ("error", {"status": 500})],
)
async def test_xnat_failures_at_spawn_time_fail_closed(world, fault, kwargs):
    world.fault("projects", fault, **kwargs)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice"))
    assert err.value.reason == "xnat_unavailable"
    assert "XNAT is unavailable" in err.value.jupyterhub_message


async def test_xnat_down_and_slow(world):
    spawner = spawner_for(world, "alice", xnat_timeout=0.5)
    world.go_down()
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner)
    assert err.value.reason == "xnat_unavailable"
    world.come_up()
    world.fault("projects", "slow", delay=3.0)
    t0 = time.monotonic()
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner)
    assert err.value.reason == "xnat_unavailable"
    assert time.monotonic() - t0 < 2.5
    world.clear_faults()
    world.fault("projects", "slow", delay=0.3)
    assert (await build_plan(spawner_for(world, "alice"))).projects == ("PA", "PB")


async def test_launch_options_failures(world):
    launch = {"projectId": "PA", "eventTrackingId": "x"}
    world.fault("user_options", "garbage")
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", user_options=launch))
    assert err.value.reason == "xnat_unavailable"
    world.clear_faults()
    # a wrong service password is the admin's problem, not "XNAT is down"
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", user_options=launch, service_password="wrong"))
    assert err.value.reason == "xnat_refused"
    # a service account without the JupyterHub role
    world.set_roles("jupyterhub", [])
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", user_options=launch))
    assert err.value.reason == "xnat_refused"


async def test_revoked_token_asks_for_a_new_login(world):
    tok = world.mint_token("alice")
    world.revoke_token(tok["alias"])
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", token=tok))
    assert err.value.reason == "token_expired"
    assert "log in again" in err.value.jupyterhub_message


async def test_missing_auth_state_asks_for_a_new_login(world):
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", token=None))
    assert err.value.reason == "token_expired"
    assert world.count() == 0


async def test_expiring_token_is_refreshed_through_the_authenticator(world):
    fresh = world.mint_token("alice")
    refreshed_state = user_auth_state(world.url, "alice", fresh)
    auth = FakeAuthenticator({"name": "alice", "auth_state": refreshed_state})
    spawner = spawner_for(world, "alice", token=expiring_token(10), authenticator=auth)
    plan = await build_plan(spawner)
    assert auth.calls == 1
    assert spawner.user.saved == [refreshed_state]
    # the server's token was minted with the refreshed login token (the expiring one is a fake
    # XNAT would refuse)
    assert plan.env["XNAT_USER"] != fresh["alias"]
    assert world.token_owner(plan.env["XNAT_USER"], plan.env["XNAT_PASS"]) == "alice"
    assert [c.auth_kind for c in world.calls if c.endpoint == "tokens.issue"] in (["basic-token"], ["session"])


@pytest.mark.parametrize("result", [False, None, {"name": "alice"}])
async def test_expiring_token_without_refresh_asks_for_a_new_login(world, result):
    auth = FakeAuthenticator(result)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", token=expiring_token(10), authenticator=auth))
    assert err.value.reason == "token_expired"
    assert auth.calls == 1
    assert world.count() == 0


async def test_a_session_kept_through_an_outage_without_renewal_is_a_503_not_a_new_login(world):
    # XnatOAuthenticator answers True, keeping the session, only while the provider or XNAT is down
    auth = FakeAuthenticator(True)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", token=expiring_token(10), authenticator=auth))
    assert err.value.reason == "renewal_unavailable" and err.value.status_code == 503
    assert "try again in a few minutes" in err.value.jupyterhub_message
    assert world.count() == 0
    # an expired token is past keeping: log in again
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", token=expiring_token(-10), authenticator=auth))
    assert err.value.reason == "token_expired"


class XnatAtUrl(FakeAuthenticator):
    """An authenticator configured for one XNAT, as XnatOAuthenticator is (``xnat_url``)."""

    def __init__(self, xnat_url: str):
        super().__init__(False)
        self.xnat_url = xnat_url


@pytest.mark.parametrize("configured_in", ["hooks", "authenticator"])
async def test_token_for_another_xnat_is_never_sent(world, configured_in):
    """The stored URL must be this hub's XNAT (XnatSpawnHooks.xnat_url, else the authenticator's)
    before the user's token goes anywhere; another XNAT's token means a new login."""
    moved = "http://127.0.0.1:9"  # the hub's XNAT now; the token came from the emulator
    spawner = spawner_for(world, "alice", authenticator=XnatAtUrl(moved))
    spawner.config.XnatSpawnHooks.xnat_url = moved if configured_in == "hooks" else ""
    spawner = FakeSpawner(config=spawner.config, user=spawner.user)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner)
    assert err.value.reason == "token_expired" and err.value.status_code == 403
    assert world.count() == 0
    assert spawner.user.authenticator.calls == 0, "nothing refreshed for another XNAT either"


async def test_without_xnat_url_the_hooks_use_the_authenticators_never_the_stored_one(world):
    spawner = spawner_for(world, "alice", authenticator=XnatAtUrl(world.url))
    spawner.config.XnatSpawnHooks.xnat_url = ""
    plan = await build_plan(FakeSpawner(config=spawner.config, user=spawner.user))
    assert plan.projects == ("PA", "PB")
    # no XNAT configured anywhere: the URL in auth_state is not trusted on its own
    spawner = spawner_for(world, "alice")
    spawner.config.XnatSpawnHooks.xnat_url = ""
    with pytest.raises(SpawnRefused) as err:
        await build_plan(FakeSpawner(config=spawner.config, user=spawner.user))
    assert err.value.reason == "config"
    assert world.count("projects") == 1


async def test_an_xnat_launch_reads_its_options_from_the_configured_xnat_whatever_auth_state_says(world):
    stored = world.store_user_options("alice", "", project_id="PA")
    launch = {"projectId": "PA", "eventTrackingId": stored["eventTrackingId"]}
    spawner = spawner_for(world, "alice", user_options=launch, allowed_images=["*"])
    spawner.user._auth_state["xnat"]["url"] = "http://127.0.0.1:9"  # a login from another XNAT
    plan = await build_plan(spawner)
    assert plan.origin == "xnat" and world.count("user_options") == 1


async def test_nothing_to_mount(world):
    world.add_user("carl", "pw", roles=["Jupyter"])
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "carl"))
    assert err.value.reason == "no_data"


async def test_allow_start_without_data_starts_with_a_visible_warning(world, caplog):
    world.add_user("carl", "pw", roles=["Jupyter"])
    plan = await build_plan(spawner_for(world, "carl", allow_start_without_data=True))
    assert plan.origin == "none" and plan.data_mounts == ()
    assert plan.workspace is not None
    assert "nothing to mount" in plan.full_env()["XNAT_SPAWN_WARNING"]
    world.go_down()
    with caplog.at_level("WARNING", logger="spawn_hooks"):
        plan = await build_plan(spawner_for(world, "alice", allow_start_without_data=True))
    assert "XNAT is unavailable" in plan.full_env()["XNAT_SPAWN_WARNING"]
    assert "without XNAT data" in caplog.text


async def test_no_secret_in_logs(world, caplog):
    tok = world.mint_token("alice")
    with caplog.at_level("DEBUG"):
        await build_plan(spawner_for(world, "alice", token=tok))
        world.go_down()
        with pytest.raises(SpawnRefused):
            await build_plan(spawner_for(world, "alice", token=tok))
    assert tok["secret"] not in caplog.text
    assert "service-pw" not in caplog.text


async def test_spawns_do_not_block_each_other(world):
    """Ten spawns against an XNAT that takes 0.5 s each finish together, not one after another."""
    world.fault("projects", "slow", delay=0.5)
    t0 = time.monotonic()
    plans = await asyncio.gather(*(build_plan(spawner_for(world, "alice")) for _ in range(10)))
    assert all(p.projects == ("PA", "PB") for p in plans)
    assert time.monotonic() - t0 < 3.0


# -- launches as XNAT makes them (plugin 1.x: DefaultUserOptionsService.toTaskTemplate) --------


def test_the_trust_line_drops_what_the_hub_keeps_and_passes_what_xnat_admins_configured():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    cs = opts["task_template"]["container_spec"]
    cs["env"].update({
        # a compute environment's own (XNAT admins decide what runs in the container)
        "LD_LIBRARY_PATH": "/opt/fsl/lib", "PATH": "/opt/fsl/bin:/usr/bin", "PYTHONPATH": "/opt/lib",
        "OMP_NUM_THREADS": "4", "LD_PRELOAD": "/opt/lib/libtcmalloc.so",
        # the hub's
        "JUPYTERHUB_API_TOKEN": "stolen", "JPY_API_TOKEN": "x", "NB_UID": "0", "NB_USER": "root",
        "GRANT_SUDO": "yes", "CHOWN_HOME": "yes", "XNAT_SPAWN_WARNING": "fake",
    })
    cs["labels"] = {"traefik.http.routers.x.rule": "Host(`evil`)", "com.docker.stack.namespace": "x",
                    "org.example.site": "ok"}
    opts["task_template"]["resources"].update(cpu_limit=1e12, mem_limit="99999999T",
                                             generic_resources={"gpu": 10_000, "fpga": 1})
    plan = launch_plan(opts)
    for name in ("LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "OMP_NUM_THREADS", "LD_PRELOAD"):
        assert plan.env[name] == cs["env"][name]
    for name in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "NB_UID", "NB_USER", "GRANT_SUDO", "CHOWN_HOME",
                 "XNAT_SPAWN_WARNING"):
        assert name not in plan.env
    assert plan.env["JUPYTERHUB_ROOT_DIR"] == "/workspace/non-admin"  # the plugin's own
    assert dict(plan.labels) == {"org.example.site": "ok"}
    assert (plan.resources.cpu_limit, plan.resources.mem_limit) == (None, None)
    assert plan.resources.cpu_reservation == 4.0 and plan.resources.generic == (("fpga", 1),)
    assert {d.split("=")[0].split(" (")[0] for d in plan.dropped} >= {
        "env JUPYTERHUB_API_TOKEN", "env NB_UID", "env GRANT_SUDO", "label traefik.http.routers.x.rule",
        "cpu_limit", "mem_limit", "gpu"}
    assert "stolen" not in " ".join(plan.dropped) and "stolen" not in plan.describe()


def test_the_command_is_an_argument_list_never_a_shell_line():
    dashboard = ("jhsingle-native-proxy --port 8888 --destport 8501 --repo https://example.org/d.git "
                 "--repobranch main --repofolder /home/jovyan/dashboards streamlit run "
                 "/home/jovyan/dashboards/app.py {--}server.port {port} {--}server.headless True")
    plan = launch_plan(_with(CS + ("command",), dashboard))
    assert plan.command == tuple(dashboard.split(" "))
    assert "{port}" in plan.command  # jhsingle-native-proxy's own placeholder stays
    plan = launch_plan(_with(CS + ("command",), "run.sh; rm -rf / $(id)"))
    assert plan.command == ("run.sh;", "rm", "-rf", "/", "$(id)")  # words, for no shell to read
    assert launch_plan().command is None


@pytest.mark.parametrize("resources", [None, {"cpu_limit": None, "cpu_reservation": None, "mem_limit": None,
                                              "mem_reservation": None, "generic_resources": None}])
def test_resources_may_be_null(resources):
    plan = launch_plan(_with(("task_template", "resources"), resources))
    assert plan.resources == plan.resources.__class__()


def test_compute_environment_volume_and_bind_mounts_under_the_admins_roots():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["task_template"]["container_spec"]["mounts"] += [
        {"target": "/data/atlas", "source": "/srv/reference/atlas", "type": "bind", "read_only": False},
        {"target": "/data/scratch", "source": "/srv/scratch/non-admin", "type": "bind", "read_only": False},
        {"target": "/data/models", "source": "xnat-models", "type": "volume", "read_only": True},
    ]
    plan = launch_plan(opts, extra_readonly_roots=("/srv/reference",), extra_writable_roots=("/srv/scratch",))
    by_target = {m.target: m for m in plan.mounts}
    assert (by_target["/data/atlas"].kind, by_target["/data/atlas"].read_only) == ("shared", True)
    assert (by_target["/data/scratch"].kind, by_target["/data/scratch"].read_only) == ("extra", False)
    vol = by_target["/data/models"]
    assert (vol.type, vol.source, vol.read_only) == ("volume", "xnat-models", True)
    with pytest.raises(PlanError, match="outside"):
        launch_plan(opts, extra_readonly_roots=())
    with pytest.raises(PlanError, match="not in allowed_volumes"):
        launch_plan(opts, extra_readonly_roots=("/srv/reference",), extra_writable_roots=("/srv/scratch",),
                    allowed_volumes=("other",))


SHARED_TREE = "/docker/data/xnat/archive/SHARED.PROJECT.DATA.STORAGE.DIRECTORY/jupyter-notebooks/20220822T201541799Z"


def test_a_shared_data_tree_of_this_launch_is_mounted_whole_read_only():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    cs = opts["task_template"]["container_spec"]
    cs["mounts"] = cs["mounts"][:1] + [
        {"target": "/data/projects/TestProject", "source": SHARED_TREE, "type": "bind", "read_only": False}]
    plan = launch_plan(opts)
    (tree,) = plan.data_mounts
    assert (tree.source, tree.target, tree.read_only, tree.project) == (
        SHARED_TREE, "/data/projects/TestProject", True, "TestProject")
    assert plan.projects == ("TestProject",)
    # another project's target, or another launch's tree: refused
    cs["mounts"][1]["target"] = "/data/projects/Other"
    with pytest.raises(PlanError, match="shared-data tree of another launch"):
        launch_plan(opts)


@pytest.mark.parametrize("roots", [[""], ["/"], ["/var"], ["/var/run"], ["/run/docker.sock"], ["relative"],
                                   ["/srv/a/../b"]])
def test_extra_roots_refuse_the_host_and_the_docker_socket(roots):
    from xnat_oauth.errors import ConfigError

    c = Config()
    c.XnatSpawnHooks.extra_readonly_roots = roots
    with pytest.raises((ConfigError, TraitError)):
        XnatSpawnHooks(config=c).check()


@pytest.mark.parametrize("root", ["/docker/data/xnat/workspaces/users", "/docker/data", "/docker/data/xnat/archive/P1"])
def test_extra_roots_may_not_overlap_the_workspaces_or_the_archive(root):
    from xnat_oauth.errors import ConfigError

    c = Config()
    c.XnatSpawnHooks.archive_root = "/docker/data/xnat/archive"
    c.XnatSpawnHooks.workspace_root = "/docker/data/xnat/workspaces"
    c.XnatSpawnHooks.extra_writable_roots = [root]
    with pytest.raises(ConfigError, match="overlaps"):
        XnatSpawnHooks(config=c).check()


def test_the_plugins_server_prefix_names_are_read(monkeypatch):
    monkeypatch.setenv("JH_XNAT_PT_ARCHIVE_DOCKER_PREFIX", "/old/archive")
    monkeypatch.setenv("JH_XNAT_PT_ARCHIVE_SERVER_PREFIX", "/srv/xnat/archive")
    monkeypatch.setenv("JH_XNAT_PT_WORKSPACE_SERVER_PREFIX", "/srv/xnat/workspaces")
    monkeypatch.delenv("JH_XNAT_PT_WORKSPACE_DOCKER_PREFIX", raising=False)
    s = XnatSpawnHooks()
    # the plugin: the SERVER prefix overrides the DOCKER one (JupyterHubPreferenceInitializer)
    assert (s.archive_host_prefix, s.workspace_host_prefix) == ("/srv/xnat/archive", "/srv/xnat/workspaces")
    assert (s.archive_root, s.workspace_root) == ("/srv/xnat/archive", "/srv/xnat/workspaces")


# -- against the emulator -----------------------------------------------------------------------


def launch_of(stored: dict) -> dict:
    return {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}


async def test_a_project_with_shared_in_experiments_launches_with_its_shared_data_tree(world):
    world.add_project("PC", readers=["bob"])
    world.share_experiment("PC", "PA")
    stored = world.store_user_options("alice", "", project_id="PA")
    plan = await build_plan(spawner_for(world, "alice", user_options=launch_of(stored), allowed_images=["*"]))
    (tree,) = plan.data_mounts
    assert tree.target == "/data/projects/PA" and tree.read_only and plan.projects == ("PA",)
    assert tree.source.startswith(f"{world.archive_root}/SHARED.PROJECT.DATA.STORAGE.DIRECTORY/jupyter-notebooks/")
    from pathlib import Path

    exps = sorted(p.name for p in (Path(tree.source) / "experiments").iterdir())
    assert exps == ["PA_E00001", "PC_E00001"]


async def test_a_compute_environment_launch_keeps_its_env_command_and_mounts(world, tmp_path):
    (tmp_path / "ref").mkdir()
    env = {"image": "xnat/fsl:6", "command": "python -m myapp --port 8888",
           "environmentVariables": [{"key": "LD_LIBRARY_PATH", "value": "/opt/fsl/lib"},
                                    {"key": "NB_UID", "value": "0"}],
           "mounts": [{"volumeName": "", "localPath": str(tmp_path / "ref"), "containerPath": "/data/ref",
                       "readOnly": True},
                      {"volumeName": "models", "localPath": "models", "containerPath": "/data/models",
                       "readOnly": True}]}
    stored = world.store_user_options("alice", "", project_id="PA", compute_environment=env, hardware=None)
    plan = await build_plan(spawner_for(world, "alice", user_options=launch_of(stored), allowed_images=["*"],
                                        extra_readonly_roots=[str(tmp_path)]))
    assert plan.image == "xnat/fsl:6" and plan.command == ("python", "-m", "myapp", "--port", "8888")
    assert plan.env["LD_LIBRARY_PATH"] == "/opt/fsl/lib" and "NB_UID" not in plan.env
    assert plan.dropped == ("env NB_UID",)
    kinds = {m.target: (m.type, m.kind) for m in plan.mounts}
    assert kinds["/data/ref"] == ("bind", "shared") and kinds["/data/models"] == ("volume", "volume")
    assert plan.resources == plan.resources.__class__()  # the hardware had no values: all null


async def test_hub_started_servers_never_mount_a_protected_project_of_others(world):
    world.add_project("PROT", protected=True, readers=["bob"])
    world.add_project("PUB", public=True)
    plan = await build_plan(spawner_for(world, "alice"))
    assert plan.projects == ("PA", "PB", "PUB")  # PROT is listed to alice, its data is not hers
    assert world.count("project_subjects") == 4
    plan = await build_plan(spawner_for(world, "bob"))
    assert plan.projects == ("PB", "PROT", "PUB")


async def test_project_checks_are_cached_briefly_and_capped_with_a_message(world):
    tok = world.mint_token("alice")
    await build_plan(spawner_for(world, "alice", token=tok))
    await build_plan(spawner_for(world, "alice", token=tok))
    assert world.count("projects") == 2 and world.count("project_subjects") == 2  # answers reused
    plan = await build_plan(spawner_for(world, "alice", max_project_checks=1, project_check_cache_seconds=0))
    assert plan.projects == ("PA",)
    assert "this hub mounts at most 1" in plan.full_env()["XNAT_SPAWN_WARNING"]


async def test_project_checks_fail_closed(world):
    world.fault("project_subjects", "error", status=503)
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner_for(world, "alice", project_check_cache_seconds=0))
    assert err.value.reason == "xnat_unavailable"


async def test_the_service_account_keeps_one_session_across_spawns(world):
    stored = [world.store_user_options("alice", f"s{i}", project_id="PA") for i in range(30)]
    plans = await asyncio.gather(*(
        build_plan(spawner_for(world, "alice", user_options=launch_of(o), name=f"s{i}", allowed_images=["*"]))
        for i, o in enumerate(stored)))
    assert {p.projects for p in plans} == {("PA",)}
    assert world.sessions_opened.get("jupyterhub") == 1
    calls = [c for c in world.calls if c.endpoint == "user_options"]
    assert [c.auth_kind for c in calls].count("basic-password") == 1


async def test_1200_spawns_leave_the_service_account_unlocked_under_xnats_session_cap(make_xnat):
    """XNAT allows 1,000 live sessions per account and counts a login past them as a failed
    one; 20 lock the account. Scaled down: a cap of 40, 1,200 launches, the clock moving on
    so sessions expire in between."""
    now = [1_700_000_000.0]
    xnat = make_xnat(concurrent_max_sessions=40, session_timeout=900, clock=lambda: now[0])
    add_service_account(xnat)
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    xnat.add_project("PA", readers=["alice"])
    stored = xnat.store_user_options("alice", "", project_id="PA")
    sem = asyncio.Semaphore(20)

    async def one(i):
        async with sem:
            if i == 600:
                now[0] += 1000  # XNAT ends the idle session; the hooks log in once more
            return await build_plan(spawner_for(xnat, "alice", user_options=launch_of(stored), allowed_images=["*"],
                                                service_session_max_idle=3600))

    plans = await asyncio.gather(*(one(i) for i in range(1200)))
    assert all(p.projects == ("PA",) for p in plans)
    assert not xnat.locked("jupyterhub") and xnat.failures("jupyterhub") == 0
    assert xnat.count("user_options") == 1200
    # one session, and after XNAT ended it one more per request already in flight (at most the
    # 20 running at once), never one per spawn
    assert 2 <= xnat.sessions_opened["jupyterhub"] <= 1 + 20
    assert xnat.live_sessions("jupyterhub") <= 20


def _xnatpy_listing(env: dict) -> tuple[list[str], dict[str, list[str]]]:
    """What a researcher's notebook does: ``xnat.connect()`` with the notebook's environment."""
    import xnat as xnatpy

    with xnatpy.connect(env["XNAT_HOST"], user=env["XNAT_USER"], password=env["XNAT_PASS"], loglevel="ERROR") as s:
        projects = sorted(s.projects.keys())
        subjects = {}
        for pid in projects:
            try:
                subjects[pid] = sorted(x.label for x in s.projects[pid].subjects.values())
            except xnatpy.exceptions.XNATResponseError:
                subjects[pid] = None  # listed, data closed
        return projects, subjects


@pytest.mark.parametrize("launched_from", ["hub", "xnat"])
async def test_xnatpy_with_a_notebooks_credentials_lists_exactly_that_users_projects(world, launched_from):
    world.add_project("PROT", protected=True, readers=["bob"])
    world.add_project("PC", readers=["bob"])
    if launched_from == "xnat":
        stored = world.store_user_options("alice", "", project_id="PA")
        spawner = spawner_for(world, "alice", user_options=launch_of(stored), allowed_images=["*"])
    else:
        spawner = spawner_for(world, "alice")
    plan = await build_plan(spawner)
    projects, subjects = await asyncio.to_thread(_xnatpy_listing, plan.full_env())
    # exactly XNAT's listing for alice: hers and the protected one, never bob's PC
    assert projects == ["PA", "PB", "PROT"]
    assert subjects == {"PA": ["PA_S00001"], "PB": ["PB_S00001"], "PROT": None}


async def test_every_writable_mount_reached_through_a_link_is_refused(world, tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "real").mkdir(parents=True)
    (scratch / "alice").symlink_to(scratch / "real")  # stays inside the root, still a link
    env = {"mounts": [{"volumeName": "", "localPath": str(scratch / "alice"), "containerPath": "/data/scratch",
                       "readOnly": False}]}
    stored = world.store_user_options("alice", "", project_id="PA", compute_environment=env)
    spawner = spawner_for(world, "alice", user_options=launch_of(stored), allowed_images=["*"],
                          extra_writable_roots=[str(scratch)])
    with pytest.raises(SpawnRefused) as err:
        await build_plan(spawner)
    assert err.value.reason == "invalid_launch_options" and "link" in err.value.jupyterhub_message
    # read-only below the same root: a link inside the root is fine, the mount is not writable
    env["mounts"][0]["readOnly"] = True
    stored = world.store_user_options("alice", "", project_id="PA", compute_environment=env)
    plan = await build_plan(spawner_for(world, "alice", user_options=launch_of(stored), allowed_images=["*"],
                                        extra_readonly_roots=[str(scratch)]))
    assert [m.read_only for m in plan.mounts if m.target == "/data/scratch"] == [True]


async def test_a_workspace_below_a_linked_users_directory_is_refused(world, tmp_path):
    import shutil

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(world.workspace_root / "users", ignore_errors=True)
    (world.workspace_root / "users").symlink_to(elsewhere)
    try:
        with pytest.raises(SpawnRefused) as err:
            await build_plan(spawner_for(world, "alice"))
        assert "link" in err.value.jupyterhub_message
        assert list(elsewhere.iterdir()) == []  # nothing was created through the link
    finally:
        (world.workspace_root / "users").unlink()
