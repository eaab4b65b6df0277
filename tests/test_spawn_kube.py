"""KubeSpawner adapter: the real V1Pod from get_pod_manifest(), validated against Kubernetes' schema.

No cluster: ``KubeSpawner(_mock=True)`` with the kube config loader and API client patched
out builds the same pod it would send. Every pod is serialised as the kubernetes client
would send it and validated with ``kubernetes-validate`` in strict mode.
"""

from __future__ import annotations

import copy
import re
from unittest import mock

import kubernetes_validate
import pytest
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

import kubespawner.spawner as ks
from kubespawner import KubeSpawner
from spawn_hooks import kube
from spawn_hooks.config import XnatSpawnHooks
from spawn_hooks.errors import SpawnRefused
from spawn_hooks.plan import plan_from_launch, plan_from_projects
from tests.test_spawn_plan import LAUNCH, REFERENCE_OPTIONS, rules
from tests.world.spawn_fakes import FakeOrmSpawner, FakeUser, add_service_account, hooks_config, user_auth_state

BRACED_SECRET = "ab{c}d{{e}}{pod_name}}{"
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture(autouse=True)
def no_cluster():
    # KubeSpawner loads a kube config and builds an API client in __init__; neither is needed
    # to build a pod manifest, and the client would open an HTTP session.
    with mock.patch.object(ks, "load_config"), mock.patch.object(ks, "shared_client"):
        yield


def kube_config(**hooks) -> Config:
    c = Config()
    c.XnatSpawnHooks.archive_prefix = "/data/xnat/archive"
    c.XnatSpawnHooks.archive_host_prefix = "/docker/data/xnat/archive"
    c.XnatSpawnHooks.workspace_prefix = "/data/xnat/workspaces"
    c.XnatSpawnHooks.workspace_host_prefix = "/docker/data/xnat/workspaces"
    c.XnatSpawnHooks.nb_uid = 54
    c.XnatSpawnHooks.nb_gid = 55
    for k, v in hooks.items():
        setattr(c.XnatSpawnHooks, k, v)
    return c


def make_spawner(config: Config, username="non-admin", name="", **kw) -> KubeSpawner:
    return KubeSpawner(config=config, _mock=True, user=FakeUser(username), orm_spawner=FakeOrmSpawner(name), **kw)


# sanitize_for_serialization needs no connection; a full ApiClient() would open an HTTP session
_SERIALIZER = ApiClient.__new__(ApiClient)


async def pod_of(spawner) -> dict:
    pod = await spawner.get_pod_manifest()
    data = _SERIALIZER.sanitize_for_serialization(pod)
    assert (data["apiVersion"], data["kind"]) == ("v1", "Pod")
    kubernetes_validate.validate(data, kubernetes_validate.latest_version(), strict=True)
    return data


def the_container(pod):
    (c,) = pod["spec"]["containers"]
    return c


def env_of(pod) -> dict:
    return {e["name"]: e.get("value") for e in the_container(pod)["env"]}


def launch_plan_for(username="non-admin", options=None, **rule_kw):
    return plan_from_launch(
        copy.deepcopy(options or REFERENCE_OPTIONS), rules=rules(**rule_kw), username=username, servername="",
        launch=LAUNCH, spawner_image=None,
    )


async def test_xnat_launch_becomes_a_valid_pod_with_subpaths_of_one_archive_claim():
    config = kube_config()
    spawner = make_spawner(config)
    settings = XnatSpawnHooks(config=config)
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["task_template"]["resources"]["generic_resources"] = {"gpu": 2}
    kube.apply_kube(spawner, launch_plan_for(options=opts), settings)
    pod = await pod_of(spawner)
    c = the_container(pod)

    assert c["image"] == "xnat/datascience-notebook:latest"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["xnat-archive"]["persistentVolumeClaim"] == {"claimName": "xnat-archive", "readOnly": True}
    assert vols["xnat-workspace"]["persistentVolumeClaim"] == {"claimName": "xnat-workspaces"}
    mounts = [(m["name"], m["mountPath"], m.get("subPath"), m.get("readOnly")) for m in c["volumeMounts"]]
    assert mounts == [
        ("xnat-workspace", "/workspace/non-admin", "users/non-admin", False),
        ("xnat-archive", "/data/projects/TestProject/experiments", "TestProject/arc001", True),
        ("xnat-archive", "/data/projects/TestProject/resources", "TestProject/resources", True),
        ("xnat-archive", "/data/projects/TestProject/subjects", "TestProject/subjects", True),
    ]
    env = env_of(pod)
    assert env["XNAT_USER"] == "61e4f5db-33e0-4f06-86e7-a59217d65f5c"
    assert env["XNAT_PASS"] == REFERENCE_OPTIONS["task_template"]["container_spec"]["env"]["XNAT_PASS"]
    assert pod["spec"]["nodeSelector"] == {"instance.type": "jupyter"}
    limits = c["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    assert limits["cpu"] == "4.0" or float(limits["cpu"]) == 4.0
    assert int(limits["memory"]) == 16 * 2**30
    assert int(c["resources"]["requests"]["memory"]) == 16 * 2**30
    sc = c["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (54, 55)
    assert pod["spec"]["securityContext"]["fsGroup"] == 55


async def test_a_secret_with_braces_reaches_the_pod_intact():
    config = kube_config()
    spawner = make_spawner(config)
    plan = plan_from_projects(["P1"], rules=rules(), username="non-admin", servername="",
                              xnat_host="https://xnat.example.org/{x}", token_alias="alias",
                              token_secret=BRACED_SECRET)
    kube.apply_kube(spawner, plan, XnatSpawnHooks(config=config))
    env = env_of(await pod_of(spawner))
    assert env["XNAT_PASS"] == BRACED_SECRET
    assert env["XNAT_HOST"] == "https://xnat.example.org/{x}"


async def test_mixed_case_username_and_named_server_survive_pod_and_pvc_naming():
    config = kube_config()
    username, server = "aaf_YAdr3eQ-Mixed.Case", "20220822t201541799z"
    spawner = make_spawner(config, username=username, name=server)
    plan = plan_from_projects(["P1"], rules=rules(), username=username, servername=server,
                              xnat_host="https://x", token_alias="a", token_secret="s")
    kube.apply_kube(spawner, plan, XnatSpawnHooks(config=config))
    pod = await pod_of(spawner)
    for name in (spawner.pod_name, spawner.pvc_name, pod["metadata"]["name"]):
        assert DNS1123_LABEL.fullmatch(name), name
    assert spawner.pod_name != make_spawner(config, username=username.lower(), name=server).pod_name
    # the XNAT spelling is kept where XNAT's files are
    ws = [m for m in the_container(pod)["volumeMounts"] if m["name"] == "xnat-workspace"][0]
    assert (ws["mountPath"], ws["subPath"]) == (f"/workspace/{username}", f"users/{username}")
    assert env_of(pod)["JUPYTERHUB_SERVER_NAME"] == server


async def test_one_claim_for_archive_and_workspaces():
    config = kube_config(kube_archive_claim="xnat-data", kube_workspace_claim="xnat-data",
                         kube_archive_claim_root="/docker/data/xnat", kube_workspace_claim_root="/docker/data/xnat")
    spawner = make_spawner(config)
    kube.apply_kube(spawner, launch_plan_for(), XnatSpawnHooks(config=config))
    pod = await pod_of(spawner)
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"].startswith("xnat")]
    assert vol["persistentVolumeClaim"] == {"claimName": "xnat-data", "readOnly": False}
    subs = {m["subPath"]: m["readOnly"] for m in the_container(pod)["volumeMounts"] if m["name"] == "xnat-data"}
    assert subs == {"workspaces/users/non-admin": False, "archive/TestProject/arc001": True,
                    "archive/TestProject/resources": True, "archive/TestProject/subjects": True}


async def test_applying_twice_replaces_the_previous_launch_and_keeps_the_admins_config():
    config = kube_config()
    config.KubeSpawner.volumes = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    config.KubeSpawner.volume_mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    config.KubeSpawner.environment = {"SITE": "x"}
    config.KubeSpawner.node_affinity_required = [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a", "b"]}]}]
    spawner = make_spawner(config)
    settings = XnatSpawnHooks(config=config)
    kube.apply_kube(spawner, plan_from_projects(["P1", "P2"], rules=rules(), username="non-admin", servername="",
                                                xnat_host="h", token_alias="a1", token_secret="s1"), settings)
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["task_template"]["placement"]["constraints"] = ["node.labels.zone!=cold", "node.role==manager"]
    kube.apply_kube(spawner, launch_plan_for(options=opts), settings)
    pod = await pod_of(spawner)
    paths = [m["mountPath"] for m in the_container(pod)["volumeMounts"]]
    assert "/dev/shm" in paths
    assert not any("/P1/" in p or "/P2/" in p for p in paths)
    assert len(paths) == 5
    env = env_of(pod)
    assert env["SITE"] == "x" and env["XNAT_USER"] != "a1"
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "pool", "operator": "In", "values": ["a", "b"]},
        {"key": "zone", "operator": "NotIn", "values": ["cold"]},
    ]}]
    assert "nodeSelector" not in pod["spec"] or not pod["spec"]["nodeSelector"]


async def test_host_directories_of_compute_environments_cannot_be_mounted_on_kubernetes():
    config = kube_config(extra_readonly_roots=["/srv/shared"])
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    opts["task_template"]["container_spec"]["mounts"].append(
        {"target": "/data/shared", "source": "/srv/shared/atlas", "type": "bind", "read_only": True})
    plan = launch_plan_for(options=opts, extra_readonly_roots=("/srv/shared",))
    with pytest.raises(SpawnRefused) as err:
        kube.apply_kube(make_spawner(config), plan, XnatSpawnHooks(config=config))
    assert err.value.reason == "unsupported"
    assert "host directory" in err.value.jupyterhub_message


async def test_pre_spawn_hook_end_to_end_with_the_emulator(xnat):
    """The configured hook: auth_state -> XNAT (real HTTP) -> plan -> pod."""
    add_service_account(xnat)
    xnat.add_user("aaf_YAdr3eQ", None, roles=["Jupyter"])
    xnat.add_project("PK", readers=["aaf_YAdr3eQ"])
    config = hooks_config(xnat, nb_uid=1000, nb_gid=100)
    config.KubeSpawner.pre_spawn_hook = kube.pre_spawn_hook
    login = xnat.mint_token("aaf_YAdr3eQ")
    state = user_auth_state(xnat.url, "aaf_YAdr3eQ", login, source="bearer")
    spawner = KubeSpawner(config=config, _mock=True, user=FakeUser("aaf_YAdr3eQ", state))
    await spawner.run_pre_spawn_hook()
    pod = await pod_of(spawner)
    subs = sorted(m["subPath"] for m in the_container(pod)["volumeMounts"] if m["name"].startswith("xnat"))
    assert subs == ["PK/arc001", "PK/resources", "PK/subjects", "users/aaf_YAdr3eQ"]
    env = env_of(pod)
    # the pod's own token, minted for it with the login token, which stays in the hub
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == "aaf_YAdr3eQ"
    assert env["XNAT_USER"] != login["alias"] and login["secret"] not in env.values()
    assert float(env["XNAT_TOKEN_EXPIRES"]) > 0
    assert (xnat.count("projects"), xnat.count("project_subjects"), xnat.count("tokens.issue"), xnat.count()) == (1, 1, 1, 3)


async def test_pre_spawn_hook_refuses_when_xnat_is_down(xnat):
    config = hooks_config(xnat)
    xnat.add_user("dora", "pw")
    state = user_auth_state(xnat.url, "dora", xnat.mint_token("dora"))
    spawner = KubeSpawner(config=config, _mock=True, user=FakeUser("dora", state))
    xnat.go_down()
    with pytest.raises(SpawnRefused) as err:
        await kube.pre_spawn_hook(spawner)
    assert err.value.reason == "xnat_unavailable"
    assert not any(v.get("name", "").startswith("xnat") for v in spawner.volumes)


def test_swarm_constraints_map_to_node_labels():
    assert kube.node_label("node.labels.gpu") == "gpu"
    assert kube.node_label("engine.labels.instance.type") == "instance.type"
    assert kube.node_label("node.hostname") == "kubernetes.io/hostname"
    assert kube.node_label("node.role") is None
    assert kube.node_label("node.labels.a/b/c") is None


def _compute_env_options():
    opts = copy.deepcopy(REFERENCE_OPTIONS)
    cs = opts["task_template"]["container_spec"]
    cs["mounts"].append({"target": "/data/models", "source": "xnat-models", "type": "volume", "read_only": True})
    cs["command"] = "jhsingle-native-proxy --port 8888 --destport 8501 streamlit run app.py {--}server.port {port}"
    cs["env"]["LD_LIBRARY_PATH"] = "/opt/{lib}"
    opts["task_template"]["resources"] = None
    return opts


async def test_compute_environment_volume_and_command_become_a_valid_pod():
    config = kube_config(kube_volume_claims={"xnat-models": "models-pvc"})
    config.KubeSpawner.cmd = ["jupyterhub-singleuser"]
    spawner = make_spawner(config)
    plan = launch_plan_for(options=_compute_env_options())
    kube.apply_kube(spawner, plan, XnatSpawnHooks(config=config))
    pod = await pod_of(spawner)
    c = the_container(pod)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    (models,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/data/models"]
    assert vols[models["name"]]["persistentVolumeClaim"] == {"claimName": "models-pvc"}
    assert models["readOnly"] is True and "subPath" not in models
    # an argument list; the braces of the program's own placeholders reach the pod intact
    assert c["args"][: len(plan.command)] == list(plan.command) and "{port}" in c["args"]
    assert env_of(pod)["LD_LIBRARY_PATH"] == "/opt/{lib}"
    # applied again without a command: the configured cmd comes back
    kube.apply_kube(spawner, launch_plan_for(), XnatSpawnHooks(config=config))
    assert the_container(await pod_of(spawner))["args"][0] == "jupyterhub-singleuser"


async def test_a_volume_without_a_claim_mapping_is_refused_with_a_clear_message():
    config = kube_config()
    with pytest.raises(SpawnRefused) as err:
        kube.apply_kube(make_spawner(config), launch_plan_for(options=_compute_env_options()),
                        XnatSpawnHooks(config=config))
    assert err.value.reason == "unsupported"
    assert "xnat-models" in err.value.jupyterhub_message and "claim" in err.value.jupyterhub_message
