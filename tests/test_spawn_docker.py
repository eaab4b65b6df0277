"""DockerSpawner and SwarmSpawner adapters.

First what the adapters hand to Docker, captured without an engine (``spawner.docker``
replaced by a recorder). Then the real thing: a private dockerd with Swarm on 127.0.0.1, a
real JupyterHub subprocess, the XNAT emulator, and a single-user server started through
SwarmSpawner and through DockerSpawner; a probe run inside the container proves that project
data is readable and read-only, the workspace writable, and that the notebook's XNAT token
is the user's own and nobody else's.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import docker
import pytest
from traitlets.config import Config

from dockerspawner import DockerSpawner, SwarmSpawner
from spawn_hooks import docker as docker_hooks
from spawn_hooks.config import XnatSpawnHooks
from spawn_hooks.plan import plan_from_launch, plan_from_projects
from tests.test_spawn_plan import LAUNCH, REFERENCE_OPTIONS, rules
from tests.world import notebook_image
from tests.world.fixtures_docker import docker_engine, notebook_image_name  # noqa: F401 - fixtures
from tests.world.fixtures_hub import running_hub
from tests.world.hub import free_port
from tests.world.spawn_fakes import FakeHub, FakeOrmSpawner, FakeUser, SERVICE_PASSWORD, add_service_account, user_auth_state

REPO_ROOT = Path(__file__).resolve().parents[1]
SPAWN_TIMEOUT = 120.0


# -- what goes to Docker, without an engine ---------------------------------------------------


class Recorder:
    """Stands in for ``spawner.docker``: records calls, answers like the engine would."""

    def __init__(self):
        self.calls = []

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        return {"create_container": {"Id": "c0ffee"}, "create_service": {"ID": "5e7v1ce"}}.get(
            method, [{"Status": {}}] if method == "tasks" else None)

    def one(self, method):
        (kw,) = [k for m, _, k in self.calls if m == method]
        return kw


def docker_config(**hooks) -> Config:
    c = Config()
    # a fixed API version: building host configs then needs no engine
    c.DockerSpawner.client_kwargs = {"version": "1.41", "base_url": "unix:///nonexistent.sock"}
    c.DockerSpawner.read_only_volumes = {"/usr": "/usr"}
    c.DockerSpawner.environment = {"SITE": "x"}
    c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
    for k, v in {"nb_uid": 1000, "nb_gid": 100, **hooks}.items():
        setattr(c.XnatSpawnHooks, k, v)
    return c


def plan_for_reference(gpus=0):
    opts = json.loads(json.dumps(REFERENCE_OPTIONS))
    if gpus:
        opts["task_template"]["resources"]["generic_resources"] = {"gpu": gpus}
    return plan_from_launch(opts, rules=rules(), username="non-admin", servername="", launch=LAUNCH,
                            spawner_image=None)


async def created(spawner, method):
    spawner.docker = rec = Recorder()
    await spawner.create_object()
    return rec.one(method)


async def test_swarm_spec_carries_mounts_env_resources_and_placement():
    config = docker_config()
    spawner = SwarmSpawner(config=config, user=FakeUser("non-admin"), orm_spawner=FakeOrmSpawner(), hub=FakeHub())
    docker_hooks.apply_plan(spawner, plan_for_reference(gpus=2), XnatSpawnHooks(config=config))
    spec = (await created(spawner, "create_service"))["task_template"]
    cs = spec["ContainerSpec"]
    assert cs["Image"] == "xnat/datascience-notebook:latest"
    mounts = [(m["Source"], m["Target"], m.get("ReadOnly", False)) for m in cs["Mounts"]]
    assert mounts == [
        ("/usr", "/usr", True),  # the hub's own configured volumes stay
        ("/docker/data/xnat/workspaces/users/non-admin", "/workspace/non-admin", False),
        ("/docker/data/xnat/archive/TestProject/arc001", "/data/projects/TestProject/experiments", True),
        ("/docker/data/xnat/archive/TestProject/resources", "/data/projects/TestProject/resources", True),
        ("/docker/data/xnat/archive/TestProject/subjects", "/data/projects/TestProject/subjects", True),
    ]
    env = dict(e.split("=", 1) for e in cs["Env"])
    assert env["XNAT_USER"] == "61e4f5db-33e0-4f06-86e7-a59217d65f5c"
    assert (env["SITE"], env["NB_UID"], env["NB_GID"]) == ("x", "1000", "100")
    assert cs["User"] == "0"  # started as root, docker-stacks images drop to NB_UID
    res = spec["Resources"]
    assert res["Limits"] == {"NanoCPUs": 4 * 10**9, "MemoryBytes": 16 * 2**30}
    assert res["Reservations"]["NanoCPUs"] == 4 * 10**9
    assert res["Reservations"]["MemoryBytes"] == 16 * 2**30
    assert res["Reservations"]["GenericResources"] == [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
    assert spec["Placement"]["Constraints"] == ["engine.labels.instance.type==jupyter"]


async def test_docker_container_gets_bind_mounts_and_a_gpu_request():
    config = docker_config()
    spawner = DockerSpawner(config=config, user=FakeUser("non-admin"), orm_spawner=FakeOrmSpawner(), hub=FakeHub())
    docker_hooks.apply_plan(spawner, plan_for_reference(gpus=1), XnatSpawnHooks(config=config))
    kw = await created(spawner, "create_container")
    host = kw["host_config"]
    mounts = [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]]
    assert mounts[0] == ("/docker/data/xnat/workspaces/users/non-admin", "/workspace/non-admin", False)
    assert all(ro for _, t, ro in mounts if t.startswith("/data/"))
    assert host["Binds"] == ["/usr:/usr:ro"]
    assert host["Memory"] == 16 * 2**30 and host["CpuQuota"] == 400000
    assert host["DeviceRequests"][0]["Count"] == 1 and host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert kw["user"] == "0"


async def test_applying_again_replaces_the_previous_launch():
    config = docker_config()
    settings = XnatSpawnHooks(config=config)
    spawner = SwarmSpawner(config=config, user=FakeUser("non-admin"), orm_spawner=FakeOrmSpawner(), hub=FakeHub())
    docker_hooks.apply_plan(spawner, plan_for_reference(), settings)
    second = plan_from_projects(["P9"], rules=rules(), username="non-admin", servername="", xnat_host="h",
                                token_alias="a2", token_secret="s2")
    docker_hooks.apply_plan(spawner, second, settings)
    cs = (await created(spawner, "create_service"))["task_template"]["ContainerSpec"]
    targets = [m["Target"] for m in cs["Mounts"]]
    assert not any("TestProject" in t for t in targets)
    assert targets.count("/usr") == 1 and len(targets) == 5
    assert "XNAT_XSI_TYPE" not in dict(e.split("=", 1) for e in cs["Env"])
    spec = (await created(spawner, "create_service"))["task_template"]
    assert "Constraints" not in spec.get("Placement", {}) or not spec["Placement"]["Constraints"]


# -- a real engine, a real hub ----------------------------------------------------------------

PROBE = r"""
import base64, errno, json, os, urllib.error, urllib.request
out = {}
proj = "/data/projects/" + os.environ["PROBE_PROJECT"]
out["listing"] = sorted(os.listdir(proj))
files = [os.path.join(r, n) for r, _, ns in os.walk(proj + "/experiments") for n in ns]
out["dicom_bytes"] = len(open(files[0], "rb").read()) if files else -1
out["readme"] = open(proj + "/resources/README.txt").read()
out["write_data"] = []
for path in (proj + "/experiments/new.txt", proj + "/resources/README.txt", proj + "/subjects/x"):
    try:
        with open(path, "a") as f:
            f.write("x")
        out["write_data"].append("written")
    except OSError as e:
        out["write_data"].append(errno.errorcode[e.errno])
ws = os.environ["XDG_CONFIG_HOME"]
with open(os.path.join(ws, "probe.txt"), "w") as f:
    f.write("hello from " + os.environ["JUPYTERHUB_USER"])
out["workspace"] = open(os.path.join(ws, "probe.txt")).read()
host = os.environ["XNAT_HOST"]
basic = base64.b64encode((os.environ["XNAT_USER"] + ":" + os.environ["XNAT_PASS"]).encode()).decode()
def get(path):
    req = urllib.request.Request(host + path, headers={"Authorization": "Basic " + basic})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
out["whoami"] = get("/xapi/users/username")
status, body = get("/data/projects?format=json")
out["projects"] = sorted(r["ID"] for r in json.loads(body)["ResultSet"]["Result"]) if status == 200 else status
out["other_user"] = get("/xapi/users/" + os.environ["PROBE_OTHER_USER"])[0]
out["launch_options"] = get("/xapi/jupyterhub/users/" + os.environ["JUPYTERHUB_USER"] + "/server/user-options")[0]
out["mounted_projects"] = sorted(os.listdir("/data/projects"))
out["experiments"] = sorted(os.listdir(proj + "/experiments"))
# what a researcher types: xnatpy with the notebook's XNAT_HOST / XNAT_USER / XNAT_PASS
import xnat
with xnat.connect(host, user=os.environ["XNAT_USER"], password=os.environ["XNAT_PASS"], loglevel="ERROR") as session:
    out["xnatpy_projects"] = sorted(session.projects.keys())
print(json.dumps(out))
"""


def hub_config(engine, image: str, spawner_class: str, xnat, port: int) -> str:
    vols = {d: {"bind": d, "mode": "ro"} for d in notebook_image.host_mounts()}
    hooks = {
        "xnat_url": xnat.url,
        "service_username": "jupyterhub",
        "service_password": SERVICE_PASSWORD,
        "archive_prefix": xnat.site_archive_path,
        "archive_host_prefix": str(xnat.archive_root),
        "workspace_prefix": xnat.site_workspace_path,
        "workspace_host_prefix": str(xnat.workspace_root),
        "allowed_images": [image],
        "nb_uid": 1000,
        "nb_gid": 100,
        "xnat_timeout": 5.0,
    }
    lines = [
        "import sys",
        f"sys.path.insert(0, {str(REPO_ROOT)!r})",
        "import spawn_hooks.docker",
        f"from tests.world.docker_engine import {spawner_class}",
        f"c.JupyterHub.spawner_class = {spawner_class}",
        'c.JupyterHub.authenticator_class = "dummy"',
        "c.Authenticator.enable_auth_state = True",
        "c.Authenticator.allow_all = True",
        "c.JupyterHub.allow_named_servers = True",
        f"c.DockerSpawner.client_kwargs = {{'base_url': {engine.host!r}}}",
        f"c.DockerSpawner.image = {image!r}",
        "c.DockerSpawner.pull_policy = 'never'",
        "c.DockerSpawner.network_name = 'host'",
        "c.DockerSpawner.ip = '127.0.0.1'",
        f"c.DockerSpawner.port = {port}",
        f"c.DockerSpawner.cmd = {notebook_image.singleuser_cmd()!r}",
        # the skeleton image has no start script to drop root; the server runs as root
        "c.DockerSpawner.args = ['--allow-root']",
        f"c.DockerSpawner.volumes = {vols!r}",
        "c.DockerSpawner.pre_spawn_hook = spawn_hooks.docker.pre_spawn_hook",
        "c.Spawner.start_timeout = 90",
        "c.Spawner.http_timeout = 60",
    ]
    if spawner_class == "HostNetworkDockerSpawner":
        lines.append("c.DockerSpawner.remove = True")
    lines += [f"c.XnatSpawnHooks.{k} = {v!r}" for k, v in hooks.items()]
    return "\n".join(lines) + "\n"


async def spawn(hub, user: str, server: str = "", options: dict | None = None) -> list[dict]:
    """Start a server through the hub's REST API and follow its progress events to the end."""
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    r = await hub.api("POST", path, json=options or {})
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        # a hook that fails at once is answered in the POST itself
        return [{"failed": True, "status": r.status_code, "message": r.json()["message"]}]
    assert r.status_code in (201, 202), r.text + "\n" + "\n".join(hub.run_log().splitlines()[-30:])
    events = []
    async with httpx.AsyncClient(trust_env=False, timeout=SPAWN_TIMEOUT) as client:
        url = f"{hub.hub_url}/api{path}/progress"
        async with client.stream("GET", url, headers={"Authorization": f"token {hub.api_token}"}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
    return events


async def stop(hub, user: str, server: str = ""):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    r = await hub.api("DELETE", path, json={"remove": bool(server)})
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = (await hub.user_model(user))["servers"].get(server)
        if not model or model.get("stopped") or not (model.get("ready") or model.get("pending")):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"server {user}/{server} did not stop")


async def make_user(hub, xnat, name: str) -> dict:
    r = await hub.api("POST", f"/users/{name}")
    assert r.status_code in (201, 409), r.text
    tok = xnat.mint_token(name)
    r = await hub.api("PATCH", f"/users/{name}", json={"auth_state": user_auth_state(xnat.url, name, tok)})
    assert r.status_code == 200, r.text
    return tok


def probe(engine, user: str, project: str, other_user: str) -> dict:
    """Run PROBE inside the user's notebook container (found by its JupyterHub user)."""
    for c in engine.client.containers.list():
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        if env.get("JUPYTERHUB_USER") == user:
            code, out = c.exec_run(
                [notebook_image.python_in_container(), "-c", PROBE],
                environment={"PROBE_PROJECT": project, "PROBE_OTHER_USER": other_user},
            )
            assert code == 0, out.decode()
            return json.loads(out.decode().strip().splitlines()[-1])
    raise AssertionError(f"no running container of {user}")


def assert_confined(result: dict, xnat, user: str, project: str, readable: list[str]):
    assert result["listing"] == ["experiments", "resources", "subjects"]
    assert result["dicom_bytes"] > 0
    assert result["readme"].startswith(f"Project {project}")
    assert result["write_data"] == ["EROFS", "EROFS", "EROFS"]
    assert result["workspace"] == f"hello from {user}"
    assert (xnat.workspace_root / "users" / user / "probe.txt").read_text() == f"hello from {user}"
    assert result["whoami"] == [200, user]
    assert result["projects"] == readable
    assert result["other_user"] == 403
    assert result["launch_options"] == 403  # the user's token is not the service account
    assert result["xnatpy_projects"] == result["projects"]
    # nothing was written into the archive on the host either
    assert not (xnat.archive_root / project / "arc001" / "new.txt").exists()
    assert (xnat.archive_root / project / "resources" / "README.txt").read_text().endswith("members.\n")


@pytest.fixture
def world(xnat):
    from pydicom.data import get_testdata_file

    add_service_account(xnat)
    for name in ("alice", "bob"):
        xnat.add_user(name, f"{name}-pw", roles=["Jupyter"])
    dcm = Path(get_testdata_file("CT_small.dcm", download=False))
    xnat.add_project("PA", readers=["alice"], dicom_files=[dcm])
    xnat.add_project("PB", readers=["alice", "bob"], dicom_files=[dcm])
    xnat.add_project("PC", readers=["bob"], dicom_files=[dcm])
    # listed to every user, its data only for bob (XNAT's "protected" accessibility)
    xnat.add_project("PROT", protected=True, readers=["bob"], dicom_files=[dcm])
    return xnat


@pytest.fixture(scope="module")
def swarm_hub(docker_engine, notebook_image_name, xnat_emulator_session, tmp_path_factory):
    config = hub_config(docker_engine, notebook_image_name, "HostNetworkSwarmSpawner", xnat_emulator_session,
                        free_port())
    with running_hub(tmp_path_factory.mktemp("swarm-hub"), config) as hub:
        yield hub


@pytest.fixture(scope="module")
def docker_hub(docker_engine, notebook_image_name, xnat_emulator_session, tmp_path_factory):
    config = hub_config(docker_engine, notebook_image_name, "HostNetworkDockerSpawner", xnat_emulator_session,
                        free_port())
    with running_hub(tmp_path_factory.mktemp("docker-hub"), config) as hub:
        yield hub


@pytest.mark.docker
@pytest.mark.timeout(240)
async def test_swarm_hub_started_server_gets_the_users_data_read_only(swarm_hub, docker_engine, world):
    await make_user(swarm_hub, world, "alice")
    events = await spawn(swarm_hub, "alice")
    assert events[-1].get("ready"), events
    try:
        result = probe(docker_engine, "alice", "PA", "bob")
        assert_confined(result, world, "alice", "PA", ["PA", "PB", "PROT"])
        # PROT is listed to alice (xnatpy sees it too) but its data is not hers: not mounted
        assert result["mounted_projects"] == ["PA", "PB"]
        (svc,) = docker_engine.client.services.list()
        cs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert cs["User"] == "0"
        env = dict(e.split("=", 1) for e in cs["Env"])
        assert (env["NB_UID"], env["NB_GID"]) == ("1000", "100")
        # the workspace was created by the hook for the notebook user
        ws = world.workspace_root / "users" / "alice"
        assert (ws.stat().st_uid, ws.stat().st_gid) == (1000, 100)
    finally:
        await stop(swarm_hub, "alice")
    assert docker_engine.client.services.list() == []


@pytest.mark.docker
@pytest.mark.timeout(240)
async def test_docker_xnat_launched_named_server(docker_hub, docker_engine, world):
    await make_user(docker_hub, world, "bob")
    server = "xnat-20240101t000000z"
    stored = world.store_user_options(bob := "bob", server, project_id="PC",
                                      image=notebook_image.IMAGE)
    body = {"userId": stored["userId"], "xsiType": "xnat:projectData", "itemId": "PC", "itemLabel": "PC",
            "projectId": "PC", "eventTrackingId": stored["eventTrackingId"], "dashboardConfigId": None}
    events = await spawn(docker_hub, bob, server, body)
    assert events[-1].get("ready"), events
    try:
        result = probe(docker_engine, bob, "PC", "alice")
        # XNAT's launch mounted only the project it was launched for; bob's token reads his
        assert_confined(result, world, bob, "PC", ["PB", "PC", "PROT"])
        assert result["mounted_projects"] == ["PC"]
        (c,) = docker_engine.client.containers.list()
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        assert env["XNAT_XSI_TYPE"] == "xnat:projectData" and env["JUPYTERHUB_SERVER_NAME"] == server
        assert world.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == bob
    finally:
        await stop(docker_hub, bob, server)


@pytest.mark.docker
@pytest.mark.timeout(120)
async def test_real_hub_shows_why_a_spawn_was_refused(swarm_hub, docker_engine, world):
    await make_user(swarm_hub, world, "alice")
    world.go_down()
    try:
        events = await spawn(swarm_hub, "alice")
    finally:
        world.come_up()
    assert events[-1]["failed"] is True
    assert events[-1]["message"].startswith("XNAT is unavailable"), events
    assert events[-1].get("status", 503) == 503
    assert docker_engine.client.services.list() == []
    # the log names the reason, never the token
    log = swarm_hub.log_text()
    assert "spawn refused (xnat_unavailable)" in log
    auth = (await swarm_hub.user_model("alice"))["auth_state"]["xnat"]["token"]
    assert auth["secret"] not in log

    # a launch that XNAT has no options for
    events = await spawn(swarm_hub, "alice", "nosuchlaunch", {"projectId": "PA", "eventTrackingId": "x"})
    assert events[-1]["failed"] is True
    assert "no launch settings" in events[-1]["message"], events


def launch_body(stored: dict) -> dict:
    """What XNAT POSTs to the hub (reference 02)."""
    return {"userId": stored["userId"], "xsiType": stored["xsiType"], "itemId": stored["itemId"],
            "itemLabel": stored["itemId"], "projectId": stored["projectId"],
            "eventTrackingId": stored["eventTrackingId"], "dashboardConfigId": None}


@pytest.mark.docker
@pytest.mark.timeout(240)
async def test_docker_compute_environment_with_its_env_command_and_a_named_volume(docker_hub, docker_engine,
                                                                                    world, tmp_path):
    await make_user(docker_hub, world, "alice")
    models = tmp_path / "models"
    models.mkdir()
    (models / "README").write_text("model weights live here\n")
    # a named volume backed by a directory, so the test can see what the container reads
    docker_engine.client.volumes.create("xnat-models", driver="local",
                                        driver_opts={"type": "none", "o": "bind", "device": str(models)})
    python = notebook_image.python_in_container()
    command = f"{python} -m jupyterhub.singleuser --ServerApp.default_url=/tree"
    env = {"image": notebook_image.IMAGE, "command": command,
           "environmentVariables": [{"key": "LD_LIBRARY_PATH", "value": "/opt/site/lib"},
                                    {"key": "PYTHONPATH", "value": "/opt/site/python"},
                                    {"key": "NB_UID", "value": "0"}],
           "mounts": [{"volumeName": "xnat-models", "localPath": "xnat-models", "containerPath": "/data/models",
                       "readOnly": True}]}
    server = "env-20240101t000000z"
    stored = world.store_user_options("alice", server, project_id="PA", compute_environment=env, hardware=None)
    events = await spawn(docker_hub, "alice", server, launch_body(stored))
    try:
        assert events[-1].get("ready"), events
        (c,) = docker_engine.client.containers.list()
        cenv = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
        assert (cenv["LD_LIBRARY_PATH"], cenv["PYTHONPATH"]) == ("/opt/site/lib", "/opt/site/python")
        assert cenv["NB_UID"] == "1000"  # the hub's, not the compute environment's
        # the command ran as an argument list (the hub's own args after it), no shell
        assert c.attrs["Config"]["Cmd"][:4] == command.split(" ") and c.attrs["Config"]["Entrypoint"] is None
        code, out = c.exec_run(["cat", "/data/models/README"])
        assert code == 0 and out.decode() == "model weights live here\n"
        code, _ = c.exec_run(["sh", "-c", "echo x > /data/models/new"])
        assert code != 0 and not (models / "new").exists()
    finally:
        await stop(docker_hub, "alice", server)
        # the hub may still be removing the stopped container: whatever still holds the
        # volume is this test's own, so it goes first (force), then the volume
        for container in docker_engine.client.containers.list(all=True, filters={"volume": "xnat-models"}):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: the hub's removal is under way; wait for it
                    raise
                try:
                    container.wait(condition="removed", timeout=60)
                except docker.errors.NotFound:
                    pass
        docker_engine.client.volumes.get("xnat-models").remove(force=True)


@pytest.mark.docker
@pytest.mark.timeout(240)
async def test_swarm_dashboard_on_a_project_with_shared_data(swarm_hub, docker_engine, world):
    await make_user(swarm_hub, world, "alice")
    world.share_experiment("PC", "PA")  # bob's PC_E00001 is shared into alice's PA
    venv_bin = notebook_image.singleuser_cmd()[0]
    # a custom dashboard's command (DefaultDashboardFrameworkService.resolveCommand)
    dashboard = f"{venv_bin} --ServerApp.default_url=/tree/dashboards"
    server = "dash-20240101t000000z"
    stored = world.store_user_options("alice", server, project_id="PA", image=notebook_image.IMAGE,
                                      dashboard_command=dashboard)
    events = await spawn(swarm_hub, "alice", server, launch_body(stored))
    try:
        assert events[-1].get("ready"), events
        (svc,) = docker_engine.client.services.list()
        cs = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert cs["Args"][:2] == dashboard.split(" ")
        result = probe(docker_engine, "alice", "PA", "bob")
        # the one shared-data tree XNAT built for this launch, read-only at /data/projects/PA
        assert result["mounted_projects"] == ["PA"]
        assert result["experiments"] == ["PA_E00001", "PC_E00001"]
        assert result["write_data"] == ["EROFS", "EROFS", "EROFS"]
        assert result["dicom_bytes"] > 0
        (tree,) = [m for m in cs["Mounts"] if m["Target"] == "/data/projects/PA"]
        assert "/SHARED.PROJECT.DATA.STORAGE.DIRECTORY/jupyter-notebooks/" in tree["Source"]
    finally:
        await stop(swarm_hub, "alice", server)
