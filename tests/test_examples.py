"""The deployment examples, checked the way a site would use them.

* ``examples/kubernetes``: the values (base + each provider overlay, merged as helm merges
  them) validate against the zero-to-jupyterhub chart's values schema (vendored in
  ``tests/schemas``); the hub configuration they produce runs the KubeSpawner hook against the
  XNAT emulator, and the pod it builds validates against Kubernetes' schema (strict).
* ``examples/docker-swarm``: ``docker-stack.yml`` follows the compose specification (and
  ``docker stack config`` accepts it where the CLI has that command); ``jupyterhub_config.py``
  loads as JupyterHub loads it and its Swarm hook spawns with the user's XNAT data.
* Nothing under ``examples/`` holds a secret, an admin password or a private address.

No cluster, engine or registry is contacted: KubeSpawner builds its pod with ``_mock=True``,
the Swarm spawner's engine calls are recorded, and the docker CLI gets a socket that does not
exist.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from importlib.metadata import entry_points
from pathlib import Path
from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from traitlets.config import Config, PyFileConfigLoader

import kubespawner.spawner as ks
import spawn_hooks.docker
import spawn_hooks.kube
from dockerspawner import SwarmSpawner
from jupyterhub.app import JupyterHub
from jupyterhub.crypto import CryptKeeper
from kubespawner import KubeSpawner
from spawn_hooks.config import XnatSpawnHooks
from tests.world.spawn_fakes import (
    SERVICE_PASSWORD,
    FakeHub,
    FakeOrmSpawner,
    FakeUser,
    add_service_account,
    user_auth_state,
)
from xnat_oauth import XnatOAuthenticator
from xnat_oauth.renewal import RENEW_SCOPE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KUBE = EXAMPLES / "kubernetes"
SWARM = EXAMPLES / "docker-swarm"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

OVERLAYS = {"values-aaf.yaml": "aaf", "values-google.yaml": "google"}
SERVER = "20220822t201541799z"  # XNAT's plugin names each launch's server by its time


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# -- Kubernetes: values ---------------------------------------------------------------------

# What the chart's own values.yaml gives the keys its schema requires. helm validates the
# user's values merged over the chart's defaults, so a values file alone lacks these.
CHART_DEFAULTS = {
    "imagePullSecrets": [],
    "hub": {"baseUrl": "/"},
    "proxy": {},
    "singleuser": {"storage": {"type": "dynamic", "homeMountPath": "/home/jovyan"}},
    "ingress": {"enabled": False},
    "prePuller": {"hook": {"enabled": True}, "continuous": {"enabled": True}},
    "custom": {},
    "cull": {"enabled": True},
    "debug": {"enabled": False},
    "rbac": {"create": True},
    "global": {"safeToShowValues": False},
}


def helm_merge(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base`` as helm coalesces values: maps merge, anything else replaces,
    null removes the key."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def site_values(overlay: str) -> dict:
    """values.yaml + the overlay, as `helm -f values.yaml -f <overlay>` sees them."""
    return helm_merge(load_yaml(KUBE / "values.yaml"), load_yaml(KUBE / overlay))


def chart_values(overlay: str) -> dict:
    """What helm validates: the site's values over the chart's defaults."""
    return helm_merge(CHART_DEFAULTS, site_values(overlay))


@pytest.fixture(scope="module")
def values_validator():
    schema = load_yaml(SCHEMAS / "z2jh-values.schema.yaml")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, values) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_values_validate_against_the_charts_schema(values_validator, overlay):
    assert schema_errors(values_validator, chart_values(overlay)) == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("hub", "extraEnvs"), {}),  # a misspelt key
        (("singleuser", "storage", "type"), "nfs"),  # not one of the chart's storage types
        (("hub", "allowNamedServers"), "yes"),  # a string where a boolean belongs
        (("ingress", "annotations", "nginx.ingress.kubernetes.io/proxy-buffer-size"), 16),
    ],
)
@pytest.mark.world  # the vendored chart schema, not our values
def test_the_schema_refuses_broken_values(values_validator, path, value):
    values = chart_values("values-aaf.yaml")
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    assert schema_errors(values_validator, values)


def test_each_overlay_chooses_its_provider_and_aaf_gets_big_proxy_buffers():
    aaf, google = site_values("values-aaf.yaml"), site_values("values-google.yaml")
    assert aaf["hub"]["config"]["XnatOAuthenticator"]["oidc_provider"] == "aaf"
    assert google["hub"]["config"]["XnatOAuthenticator"]["oidc_provider"] == "google"
    buffers = aaf["ingress"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffer-size"]
    assert int(buffers.rstrip("k")) >= 16
    for values in (aaf, google):
        # the base survives the overlay (helm merges maps)
        assert values["hub"]["config"]["XnatSpawnHooks"]["kube_archive_claim"] == "xnat-archive"
        assert values["hub"]["allowNamedServers"] is True
        assert values["hub"]["image"]["name"] != "quay.io/jupyterhub/k8s-hub"  # the image with the package


def test_hub_image_is_the_charts_image_plus_the_package():
    dockerfile = (KUBE / "hub.Dockerfile").read_text()
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:\$\{Z2JH_VERSION\}$", dockerfile, re.M)
    version = re.search(r"^ARG Z2JH_VERSION=(\d+)\.\d+\.\d+$", dockerfile, re.M)
    assert version and version[1] == "4"
    assert installed_wheel_extra(dockerfile) == "kube"


# The JupyterHub each zero-to-jupyterhub chart version ships in its hub image, from the chart's
# changelog (jupyterhub/zero-to-jupyterhub-k8s docs/source/changelog.md). A new chart version in
# the Dockerfile needs its line here, so the image's JupyterHub is always a known one.
Z2JH_JUPYTERHUB = {
    "4.3.5": "5.4.6",
    "4.4.0": "5.5.0",  # "4.4.0 upgrades JupyterHub to 5.5.0"
}


def dockerfile_arg(dockerfile: str, name: str) -> str:
    found = re.findall(rf"^ARG {name}=(\S+)$", dockerfile, re.M)
    assert len(found) == 1, f"one default for ARG {name}"
    return found[0]


def installed_wheel_extra(dockerfile: str) -> str:
    """The extra the image installs the locally built wheel with; fails unless it is that wheel."""
    assert re.search(r"^COPY dist/\*\.whl /tmp/dist/$", dockerfile, re.M), "the image copies the wheel from dist/"
    pip = "\n".join(re.findall(r"python3 -m pip install[^\n]*", dockerfile.replace("\\\n", " ")))
    assert pip, "the image installs with pip"
    extra = re.search(r'"\$\(ls /tmp/dist/xnat_oauth-\*-py3-none-any\.whl\)\[(\w+)\]"', pip)
    assert extra, f"pip installs the wheel from dist/: {pip}"
    # a name pip would look up on PyPI, where nobody has published xnat-oauth for us
    assert not re.search(r"(?<![/\w])xnat[-_]oauth(\[|\s|\"|$)", pip.replace(extra[0], "")), pip
    # the image's JupyterHub is pinned, so pip fails rather than replace it
    assert 'echo "jupyterhub==${JUPYTERHUB_VERSION}" > /tmp/keep-hub.txt' in dockerfile
    assert "-c /tmp/keep-hub.txt" in pip
    return extra[1]


def _pin(path: Path, name: str) -> Version:
    pins = [line.split("==", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith(f"{name}==")]
    assert len(pins) == 1, f"{path.name} pins {name} once"
    return Version(pins[0])


def jupyterhub_ci_range() -> tuple[SpecifierSet, Version, Version]:
    """The JupyterHub range the package declares, and the oldest and newest CI runs the suite on."""
    (declared,) = [
        Requirement(r).specifier
        for r in metadata.requires("xnat-oauth") or []
        if Requirement(r).name == "jupyterhub" and not Requirement(r).marker
    ]
    return (
        declared,
        _pin(ROOT / "requirements" / "constraints-oldest.txt", "jupyterhub"),
        _pin(ROOT / "requirements" / "constraints.txt", "jupyterhub"),
    )


def test_the_declared_jupyterhub_range_has_an_upper_bound_and_holds_both_tested_ends():
    declared, oldest, newest = jupyterhub_ci_range()
    assert any(s.operator == "<" for s in declared), declared
    assert oldest in declared and newest in declared and oldest <= newest


@pytest.mark.parametrize("example", ["kubernetes", "docker-swarm"])
def test_hub_images_jupyterhub_is_one_ci_tests(example):
    dockerfile = (EXAMPLES / example / "hub.Dockerfile").read_text()
    version = Version(dockerfile_arg(dockerfile, "JUPYTERHUB_VERSION"))
    declared, oldest, newest = jupyterhub_ci_range()
    assert version in declared and oldest <= version <= newest, (version, declared, oldest, newest)
    if example == "kubernetes":
        z2jh = dockerfile_arg(dockerfile, "Z2JH_VERSION")
        assert Z2JH_JUPYTERHUB.get(z2jh) == str(version), f"chart {z2jh} ships JupyterHub {Z2JH_JUPYTERHUB.get(z2jh)}"
    else:
        assert re.search(r"^FROM quay\.io/jupyterhub/jupyterhub:\$\{JUPYTERHUB_VERSION\}$", dockerfile, re.M)


def test_the_build_context_holds_only_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][0] == "*"  # everything is left out first
    admitted = {line[1:] for line in ignore if line.startswith("!")}
    for example in ("kubernetes", "docker-swarm"):
        dockerfile = (EXAMPLES / example / "hub.Dockerfile").read_text()
        for source in re.findall(r"^COPY (\S+) \S+$", dockerfile, re.M):
            assert source in admitted, f"{example}: COPY {source} is not in .dockerignore's allow list"
            if source != "dist/*.whl":
                assert (ROOT / source).is_file(), source


# -- Kubernetes: the hub configuration the values produce -------------------------------------

TRAIT_OWNERS = {
    "JupyterHub": JupyterHub,
    "XnatOAuthenticator": XnatOAuthenticator,
    "XnatSpawnHooks": XnatSpawnHooks,
    "KubeSpawner": KubeSpawner,
}


def the_secret() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((KUBE / "secrets.example.yaml").read_text()) if d]
    return doc


# stand-ins for what a site puts into the Secret
SECRET_VALUES = {
    "oauth-client-secret": "client-secret-not-secret-in-tests",
    "aaf-client-secret": "aaf-secret-not-secret-in-tests",
    "google-client-secret": "google-secret-not-secret-in-tests",
    "xnat-service-password": SERVICE_PASSWORD,
}

#: the overlay with several providers on one login page
MULTI = "values-aaf-google.yaml"


def hub_env(values: dict) -> dict:
    """The hub container's environment from ``hub.extraEnv``, the Secret's keys filled in."""
    secret_name = the_secret()["metadata"]["name"]
    env = {}
    for name, spec in values["hub"]["extraEnv"].items():
        if isinstance(spec, str):
            env[name] = spec
        elif "value" in spec:
            env[name] = spec["value"]
        else:
            ref = spec["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret_name, f"{name} names another Secret: {ref['name']}"
            env[name] = SECRET_VALUES[ref["key"]]
    return env


def apply_singleuser(c: Config, singleuser: dict) -> None:
    """What z2jh's jupyterhub_config.py makes of the ``singleuser`` keys these values use."""
    known = {"image", "startTimeout", "cpu", "memory", "storage"}
    assert set(singleuser) <= known, f"teach this test z2jh's mapping of {set(singleuser) - known}"
    c.KubeSpawner.image = f"{singleuser['image']['name']}:{singleuser['image']['tag']}"
    c.KubeSpawner.start_timeout = singleuser["startTimeout"]
    c.KubeSpawner.cpu_guarantee = singleuser["cpu"]["guarantee"]
    c.KubeSpawner.cpu_limit = singleuser["cpu"]["limit"]
    c.KubeSpawner.mem_guarantee = singleuser["memory"]["guarantee"]
    c.KubeSpawner.mem_limit = singleuser["memory"]["limit"]
    storage = singleuser["storage"]
    assert storage["type"] == "dynamic"
    # the chart's default pvcNameTemplate / volumeNameTemplate
    c.KubeSpawner.pvc_name_template = "claim-{user_server}"
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.storage_capacity = storage["capacity"]
    c.KubeSpawner.volumes = [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
    c.KubeSpawner.volume_mounts = [{"name": "volume-{user_server}", "mountPath": storage["homeMountPath"]}]


def hub_config(values: dict) -> Config:
    """The hub's traitlets config, built as z2jh's jupyterhub_config.py builds it."""
    c = Config()
    apply_singleuser(c, values["singleuser"])
    for section, settings in values["hub"]["config"].items():
        c[section].update(copy.deepcopy(settings))
    for name, snippet in sorted(values["hub"]["extraConfig"].items()):
        exec(compile(snippet, name, "exec"), {"c": c})  # noqa: S102 - the example's own config
    return c


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_may_renew_their_xnat_token(overlay):
    """z2jh: the custom scope defined, granted to the server role (within the user role's)."""
    hub = site_values(overlay)["hub"]
    assert set(hub["config"]["JupyterHub"]["custom_scopes"]) == {RENEW_SCOPE}
    roles = hub["loadRoles"]
    assert f"{RENEW_SCOPE}!server" in roles["server"]["scopes"]
    assert {"users:activity!user", "access:servers!server"} <= set(roles["server"]["scopes"])
    assert {"self", f"{RENEW_SCOPE}!user"} <= set(roles["user"]["scopes"])


@pytest.fixture
def no_cluster():
    # KubeSpawner loads a kube config and builds an API client in __init__; a pod manifest
    # needs neither, and the client would open an HTTP session.
    with mock.patch.object(ks, "load_config"), mock.patch.object(ks, "shared_client"):
        yield


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hub_config_names_only_real_settings(overlay):
    for section, settings in site_values(overlay)["hub"]["config"].items():
        known = TRAIT_OWNERS[section].class_traits(config=True)
        assert set(settings) <= set(known), f"{section}: no such setting {set(settings) - set(known)}"


def test_authenticator_class_name_is_the_packages_entry_point():
    (ep,) = [e for e in entry_points(group="jupyterhub.authenticators") if e.name == "xnat-oauth"]
    assert ep.load() is XnatOAuthenticator
    for overlay in OVERLAYS:
        assert site_values(overlay)["hub"]["config"]["JupyterHub"]["authenticator_class"] == "xnat-oauth"


def test_secret_example_holds_placeholders_only_and_is_a_valid_secret():
    secret = the_secret()
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert secret["stringData"] and set(secret["stringData"].values()) == {"<replace-me>"}
    assert set(secret["stringData"]) == set(SECRET_VALUES)
    refs = {
        spec["valueFrom"]["secretKeyRef"]["key"]
        for values in (load_yaml(KUBE / "values.yaml"), load_yaml(KUBE / MULTI))
        for spec in values["hub"]["extraEnv"].values()
        if isinstance(spec, dict) and "valueFrom" in spec
    }
    assert refs == set(secret["stringData"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_authenticator_starts_with_the_values_and_the_secret(overlay, monkeypatch):
    values = site_values(overlay)
    env = hub_env(values)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # encryption is the chart's (hub.config.CryptKeeper.keys); CryptKeeper is a process-wide
    # singleton other tests use, so it is left alone here
    with mock.patch.object(XnatOAuthenticator, "_require_encryption"):
        auth = XnatOAuthenticator(config=hub_config(values))
    auth.check_allow_config()  # exits on a configuration the hub would refuse
    assert auth.oidc_provider == OVERLAYS[overlay]
    assert auth.client_secret == SECRET_VALUES["oauth-client-secret"]
    assert auth.xnat_url == env["JH_XNAT_URL"]
    assert auth.enable_auth_state


_SERIALIZER = ApiClient.__new__(ApiClient)  # sanitize_for_serialization needs no connection


async def valid_pod(spawner) -> dict:
    pod = _SERIALIZER.sanitize_for_serialization(await spawner.get_pod_manifest())
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    return pod


def values_spawner(values, monkeypatch, xnat, user: FakeUser, servername: str) -> KubeSpawner:
    env = {**hub_env(values), "JH_XNAT_URL": xnat.url}  # the emulator stands in for XNAT
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spawner = KubeSpawner(config=hub_config(values), _mock=True, user=user, orm_spawner=FakeOrmSpawner(servername))
    assert spawner.pre_spawn_hook is spawn_hooks.kube.pre_spawn_hook
    assert spawner.post_stop_hook is spawn_hooks.kube.post_stop_hook
    return spawner


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("launched_from_xnat", [True, False], ids=["xnat-launch", "hub-start"])
async def test_the_pod_the_hook_builds_for_these_values_is_valid(
    overlay, launched_from_xnat, xnat, monkeypatch, no_cluster
):
    values = site_values(overlay)
    hooks = values["hub"]["config"]["XnatSpawnHooks"]
    provider = OVERLAYS[overlay]
    username = f"{provider}_YAdr3eQ-Mixed.Case"  # the pattern's [providerId]_[sub], case kept
    add_service_account(xnat)
    xnat.add_user(username, None, roles=["Jupyter"])
    xnat.add_project("PK", readers=[username])
    state = user_auth_state(xnat.url, username, xnat.mint_token(username), source="bearer")
    servername = SERVER if launched_from_xnat else ""
    spawner = values_spawner(values, monkeypatch, xnat, FakeUser(username, state), servername)
    if launched_from_xnat:
        image = hooks["allowed_images"][-1]
        stored = xnat.store_user_options(username, SERVER, project_id="PK", image=image)
        spawner.user_options = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}
    calls_before = xnat.count()

    await spawner.run_pre_spawn_hook()
    pod = await valid_pod(spawner)

    # one request for an XNAT launch; the listing, a read check per project and the pod's own
    # token otherwise
    assert xnat.count() == calls_before + (1 if launched_from_xnat else 3)
    (container,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    archive_claim = {"claimName": hooks["kube_archive_claim"], "readOnly": True}
    assert volumes["xnat-archive"]["persistentVolumeClaim"] == archive_claim
    assert volumes["xnat-workspace"]["persistentVolumeClaim"] == {"claimName": hooks["kube_workspace_claim"]}
    mounts = {(m["name"], m.get("subPath"), m["mountPath"], bool(m.get("readOnly"))) for m in container["volumeMounts"]}
    assert {
        ("xnat-workspace", f"users/{username}", f"/workspace/{username}", False),
        ("xnat-archive", "PK/arc001", "/data/projects/PK/experiments", True),
        ("xnat-archive", "PK/resources", "/data/projects/PK/resources", True),
        ("xnat-archive", "PK/subjects", "/data/projects/PK/subjects", True),
    } <= mounts
    # the user's home from singleuser.storage is still there
    home = [m for m in container["volumeMounts"] if m["mountPath"] == values["singleuser"]["storage"]["homeMountPath"]]
    assert len(home) == 1 and volumes[home[0]["name"]]["persistentVolumeClaim"]["claimName"].startswith("claim-")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == username  # the user's own token
    assert env["JUPYTERHUB_SERVER_NAME"] == servername
    assert container["image"] == (image if launched_from_xnat else spawner.image)
    sc = container["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (hooks["nb_uid"], hooks["nb_gid"])
    assert pod["spec"]["securityContext"]["fsGroup"] == hooks["nb_gid"]


# -- Docker Swarm ----------------------------------------------------------------------------

# xnat2jupyterhub's environment variables, which the stack keeps
ORIGINAL_ENV = (
    "JH_NETWORK", "JH_XNAT_URL", "JH_XNAT_USERNAME", "JH_START_TIMEOUT", "JH_UID", "JH_GID",
    "NB_UID", "NB_GID", "JH_XNAT_PT_ARCHIVE_PREFIX", "JH_XNAT_PT_ARCHIVE_DOCKER_PREFIX",
    "JH_XNAT_PT_WORKSPACE_PREFIX", "JH_XNAT_PT_WORKSPACE_DOCKER_PREFIX",
)
# ... and its secrets, now Docker secrets read from NAME_FILE
SECRET_ENV = ("JH_XNAT_PASSWORD", "JH_XNAT_SERVICE_TOKEN", "JUPYTERHUB_CRYPT_KEY", "OAUTH_CLIENT_SECRET")

_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def stack() -> dict:
    return load_yaml(SWARM / "docker-stack.yml")


def hub_service() -> dict:
    return stack()["services"]["jupyterhub"]


def test_stack_file_follows_the_compose_spec():
    with open(SCHEMAS / "compose-spec.json", encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema_errors(validator, stack()) == []
    broken = stack()
    broken["services"]["jupyterhub"]["deploy"]["placment"] = {}  # misspelt
    assert schema_errors(validator, broken)


def test_stack_keeps_xnat2jupyterhubs_variables_and_passes_secrets_as_files():
    service, top = hub_service(), stack()
    env = service["environment"]
    assert set(ORIGINAL_ENV) <= set(env)
    for name in SECRET_ENV:
        assert name not in env, f"{name} would be a secret in plain sight"
        path = env[f"{name}_FILE"]
        secret = path.removeprefix("/run/secrets/")
        assert path == f"/run/secrets/{secret}" and secret in service["secrets"]
        assert top["secrets"][secret] == {"external": True}
    assert env["JH_NETWORK"] in service["networks"] and env["JH_NETWORK"] == top["networks"]["jupyterhub"]["name"]
    assert service["deploy"]["placement"]["constraints"] == ["node.role == manager"]


def _docker_stack_config_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    out = subprocess.run([docker, "stack", "--help"], capture_output=True, text=True, timeout=30)
    return re.search(r"^\s+config\s", out.stdout, re.M) is not None


@pytest.mark.skipif(not _docker_stack_config_available(), reason="this docker CLI has no `docker stack config`")
def test_docker_stack_config_accepts_the_stack(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        # no engine is needed; this socket does not exist, so none is ever reached
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "JH_XNAT_URL": "https://xnat.test.example",
        "NB_UID": "1234",
    }
    out = subprocess.run(
        ["docker", "stack", "config", "-c", str(SWARM / "docker-stack.yml")],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]["jupyterhub"]
    assert resolved["environment"]["JH_XNAT_URL"] == "https://xnat.test.example"
    assert resolved["environment"]["NB_UID"] == "1234"
    assert resolved["environment"]["JH_XNAT_PT_ARCHIVE_PREFIX"] == "/data/xnat/archive"
    assert {s["source"] for s in resolved["secrets"]} == set(hub_service()["secrets"])


def stack_environment(overrides: dict) -> dict:
    """The hub container's environment: the stack's values, ${VAR:-default} resolved from
    ``overrides`` (what the site's shell or env file would give)."""
    env = {}
    for name, value in hub_service()["environment"].items():
        value = "" if value is None else str(value)
        env[name] = _DEFAULTED.sub(lambda m: overrides.get(m[1]) or m[2], value)
    return {**env, **{k: v for k, v in overrides.items() if k in env}}


class EngineRecorder:
    """Stands in for ``spawner.docker``: records the engine calls, answers like an engine."""

    def __init__(self):
        self.calls = []

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, kwargs))
        answers = {
            "create_service": {"ID": "5e7v1ce"},
            "inspect_image": {"Config": {"Cmd": ["start-notebook.py"]}},
            "tasks": [{"Status": {}}],
        }
        return answers.get(method)

    def one(self, method) -> dict:
        (kwargs,) = [kw for m, kw in self.calls if m == method]
        return kwargs


@pytest.fixture
def swarm_site(xnat, tmp_path, monkeypatch):
    """The stack's hub environment pointed at the emulator, its Docker secrets as files."""
    secrets = {
        "jh_xnat_password": SERVICE_PASSWORD,
        "jh_xnat_service_token": "service-token-not-secret-in-tests",
        "jupyterhub_crypt_key": "ab" * 32,
        "oauth_client_secret": "client-secret-not-secret-in-tests",
    }
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    for name, value in secrets.items():
        (run_secrets / name).write_text(value + "\n")
    env = stack_environment({
        "JH_XNAT_URL": xnat.url,
        # XNAT reports /data/xnat/...; the host directories are the emulator's
        "JH_XNAT_PT_ARCHIVE_DOCKER_PREFIX": str(xnat.archive_root),
        "JH_XNAT_PT_WORKSPACE_DOCKER_PREFIX": str(xnat.workspace_root),
        "JH_OIDC_PROVIDER": "aaf",
        "OAUTH_CLIENT_ID": "hub-client",
    })
    for name, value in env.items():
        if value.startswith("/run/secrets/"):
            value = str(run_secrets / value.removeprefix("/run/secrets/"))
        monkeypatch.setenv(name, value)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(SWARM)).load_config()
    return config, secrets, env


def test_swarm_config_uses_the_package_swarmspawner_and_the_hook(swarm_site):
    c, secrets, env = swarm_site
    assert c.JupyterHub.authenticator_class == "xnat-oauth"
    assert c.JupyterHub.spawner_class == "dockerspawner.SwarmSpawner"
    assert c.SwarmSpawner.pre_spawn_hook is spawn_hooks.docker.pre_spawn_hook
    assert c.SwarmSpawner.network_name == env["JH_NETWORK"]
    assert c.Spawner.start_timeout == int(env["JH_START_TIMEOUT"])
    assert c.JupyterHub.allow_named_servers is True
    # every secret arrives from its Docker secret file
    assert c.CryptKeeper["keys"] == [secrets["jupyterhub_crypt_key"]]
    assert c.XnatSpawnHooks.service_password == secrets["jh_xnat_password"]
    assert c.XnatOAuthenticator.client_secret == secrets["oauth_client_secret"]
    (service,) = c.JupyterHub.services
    assert service == {"name": "xnat", "api_token": secrets["jh_xnat_service_token"]}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["xnat"]["services"] == ["xnat"] and "admin:servers" in roles["xnat"]["scopes"]
    # servers end their own XNAT token at stop, and renew it through the hub
    assert c.SwarmSpawner.post_stop_hook is spawn_hooks.docker.post_stop_hook
    assert set(c.JupyterHub.custom_scopes) == {RENEW_SCOPE}
    assert f"{RENEW_SCOPE}!server" in roles["server"]["scopes"] and f"{RENEW_SCOPE}!user" in roles["user"]["scopes"]
    assert {"users:activity!user", "access:servers!server"} <= set(roles["server"]["scopes"])
    for section in ("JupyterHub", "XnatOAuthenticator", "XnatSpawnHooks", "CryptKeeper"):
        owner = {**TRAIT_OWNERS, "CryptKeeper": CryptKeeper}[section]
        assert set(c[section]) <= set(owner.class_traits(config=True)), section


def test_swarm_config_authenticator_sees_xnat_and_the_provider(swarm_site, xnat):
    c, secrets, _ = swarm_site
    with mock.patch.object(XnatOAuthenticator, "_require_encryption"):
        auth = XnatOAuthenticator(config=c)
    auth.check_allow_config()
    assert (auth.xnat_url, auth.oidc_provider, auth.client_id) == (xnat.url, "aaf", "hub-client")
    assert auth.client_secret == secrets["oauth_client_secret"]


def test_swarm_config_without_oidc_is_xnat_passwords_only(swarm_site, monkeypatch):
    monkeypatch.setenv("JH_OIDC_PROVIDER", "")
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(SWARM)).load_config()
    assert "oidc_provider" not in c.XnatOAuthenticator and "client_secret" not in c.XnatOAuthenticator


async def test_swarm_config_spawns_an_xnat_launch_with_the_users_data(swarm_site, xnat):
    c, _, env = swarm_site
    username = "alice"
    add_service_account(xnat)
    xnat.add_user(username, None, roles=["Jupyter"])
    xnat.add_project("PS", readers=[username])
    stored = xnat.store_user_options(username, SERVER, project_id="PS", image="xnat/scipy-notebook:0.3.0")
    # a fixed API version: the service spec is built without an engine
    c.DockerSpawner.client_kwargs = {"version": "1.41", "base_url": "unix:///nonexistent.sock"}
    state = user_auth_state(xnat.url, username, xnat.mint_token(username))
    spawner = SwarmSpawner(config=c, user=FakeUser(username, state), orm_spawner=FakeOrmSpawner(SERVER), hub=FakeHub())
    spawner.user_options = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}

    await spawner.run_pre_spawn_hook()
    spawner.docker = engine = EngineRecorder()
    await spawner.create_object()

    spec = engine.one("create_service")["task_template"]["ContainerSpec"]
    assert spec["Image"] == "xnat/scipy-notebook:0.3.0"
    mounts = {(m["Source"], m["Target"], m.get("ReadOnly", False)) for m in spec["Mounts"]}
    assert mounts == {
        (f"{xnat.workspace_root}/users/{username}", f"/workspace/{username}", False),
        (f"{xnat.archive_root}/PS/arc001", "/data/projects/PS/experiments", True),
        (f"{xnat.archive_root}/PS/resources", "/data/projects/PS/resources", True),
        (f"{xnat.archive_root}/PS/subjects", "/data/projects/PS/subjects", True),
    }
    container_env = dict(e.split("=", 1) for e in spec["Env"])
    assert (container_env["NB_UID"], container_env["NB_GID"]) == (env["NB_UID"], env["NB_GID"])
    assert spec["User"] == "0"  # docker-stacks images drop to NB_UID, as under xnat2jupyterhub
    assert xnat.token_owner(container_env["XNAT_USER"], container_env["XNAT_PASS"]) == username


def test_swarm_hub_image_installs_the_package_and_the_config():
    dockerfile = (SWARM / "hub.Dockerfile").read_text()
    assert re.search(r"^FROM quay\.io/jupyterhub/jupyterhub:", dockerfile, re.M)
    assert installed_wheel_extra(dockerfile) == "docker"
    assert re.search(
        r"^COPY examples/docker-swarm/jupyterhub_config\.py /etc/jupyterhub/jupyterhub_config\.py$", dockerfile, re.M
    )
    assert hub_service()["command"][-1] == "/etc/jupyterhub/jupyterhub_config.py"


# -- no secrets ------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"<[^<>\s]*>")
_SECRET_NAME = re.compile(r"(password|passwd|passphrase|secret|token|cryptkey|apikey|privatekey)$")
_PAIR = re.compile(r"""["']?([A-Za-z_][\w.\-]*)["']?\s*[:=]\s*("[^"]*"|'[^']*'|[^\s,}\]#]+)?""")
_ALWAYS_BAD = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"admin\s*[:/]\s*admin", re.I), "the admin/admin account"),
    (re.compile(r"-u\s+['\"]?admin:", re.I), "admin credentials on a command line"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "a long hex string (a key or token?)"),
    (re.compile(r"(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[a-z])(?=[A-Za-z0-9+/_-]*[A-Z])\b[A-Za-z0-9+/_-]{40,}"),
     "a long random-looking string (a key or token?)"),
    (re.compile(r"\b(10\.\d{1,3}|172\.(1[6-9]|2\d|3[01])|192\.168)\.\d{1,3}\.\d{1,3}\b"), "a private-range address"),
    (re.compile(r"(^|[\s\"'=:])/(root|work)/"), "a machine path"),
]


def _is_secret_literal(value: str | None, *, quoted_only: bool) -> bool:
    if not value:
        return False
    quoted = value[0] in "\"'"
    if quoted_only and not quoted:
        return False  # code (a call, a name) or prose, not a literal
    value = value.strip("\"'")
    if not value or value in ("|", ">", "{}", "[]", "null", "~") or value.startswith("${"):
        return False
    if value.startswith("/run/secrets/"):
        return False  # where a Docker secret is read from
    return not _PLACEHOLDER.match(value)


def secret_findings(text: str, *, quoted_only: bool = False, first_line: int = 1) -> list[str]:
    """What in ``text`` looks like a secret, an admin password or a private address.

    ``quoted_only``: only quoted values count as literals (Python, prose), else any value
    does (YAML, env files, shell).
    """
    found = []
    for number, line in enumerate(text.splitlines(), first_line):
        for pattern, what in _ALWAYS_BAD:
            if pattern.search(line):
                found.append(f"line {number}: {what}")
        for m in _PAIR.finditer(line):
            key = re.sub(r"[\W_]", "", m[1]).lower()
            if _SECRET_NAME.search(key) and _is_secret_literal(m[2], quoted_only=quoted_only):
                found.append(f"line {number}: {m[1]} is given a literal value")
    return found


def scan_file(path: Path) -> list[str]:
    """:func:`secret_findings` for one file, read as what it is."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return secret_findings(text, quoted_only=True)
    if path.suffix == ".ipynb":
        cells = json.loads(text)["cells"]
        return [f"cell {i}: {f}" for i, cell in enumerate(cells)
                for f in secret_findings("".join(cell["source"]), quoted_only=True)]
    if path.suffix == ".md":
        # code blocks are YAML or shell, read strictly; prose only counts quoted values
        found, fenced = [], False
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            found += secret_findings(line, quoted_only=not fenced, first_line=number)
        return found
    return secret_findings(text)


@pytest.mark.parametrize(
    "line",
    [
        "password: hunter2",
        "  JH_XNAT_PASSWORD: 'correct horse'",
        "JH_XNAT_SERVICE_TOKEN=eda886c63564930a7f21ad8465463bf9555bad7d1dfa0a2fb259ac556ea8420e",
        "curl -u admin:admin http://xnat/data/version",
        "client_secret: abc123SECRETzyx098",
        'c.XnatSpawnHooks.service_password = "s3cret"',
        # Assembled at run time, so the repository's own scans for keys and private-range
        # targets do not flag this test's bait.
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "JH_XNAT_URL: http://" + ".".join(["172", "17", "0", "1"]),
        "crypt-key: 0123456789abcdef",
    ],
)
@pytest.mark.world  # the scanner the example tests use
def test_the_secret_scan_finds(line):
    assert secret_findings(line, quoted_only=line.startswith("c."))


@pytest.mark.parametrize(
    "line",
    [
        "oauth-client-secret: <replace-me>",
        "client_id: <replace-me>.apps.googleusercontent.com",
        "JH_XNAT_PASSWORD_FILE: /run/secrets/jh_xnat_password",
        "OAUTH_CLIENT_SECRET:",
        'c.XnatSpawnHooks.service_password = secret("JH_XNAT_PASSWORD")',
        "secretName: xnat-example-org-tls",
        "JH_XNAT_URL: ${JH_XNAT_URL:-https://xnat.example.org}",
    ],
)
@pytest.mark.world
def test_the_secret_scan_passes(line):
    assert secret_findings(line, quoted_only=line.startswith("c.")) == []


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_no_secret_admin_password_or_private_address_in_examples(path):
    assert scan_file(path) == []


# -- AAF and Google on one login page ---------------------------------------------------------


def test_the_two_provider_overlay_validates_and_names_only_real_settings(values_validator):
    assert schema_errors(values_validator, chart_values(MULTI)) == []
    for section, settings in site_values(MULTI)["hub"]["config"].items():
        assert set(settings) <= set(TRAIT_OWNERS[section].class_traits(config=True)), section


def test_the_two_provider_overlay_starts_with_each_secret_from_the_environment(monkeypatch):
    values = site_values(MULTI)
    for name, value in hub_env(values).items():
        monkeypatch.setenv(name, value)
    with mock.patch.object(XnatOAuthenticator, "_require_encryption"):
        auth = XnatOAuthenticator(config=hub_config(values))
    auth.check_allow_config()
    aaf, google = auth.providers
    assert (aaf.id, google.id) == ("aaf", "google")
    assert aaf.client_secret == SECRET_VALUES["aaf-client-secret"]
    assert google.client_secret == SECRET_VALUES["google-client-secret"]
    assert google.username_pattern.pattern == "[providerId]-[sub]"
    entries = values["hub"]["config"]["XnatOAuthenticator"]["oidc_providers"]
    assert all("client_secret" not in e for e in entries), "secrets come from the environment only"
    assert auth.get_callback_url(SimpleNamespace(xnat_provider=google)).endswith("/hub/oauth_callback/google")


def test_the_xnat_side_example_matches_the_hubs_providers(tmp_path, monkeypatch):
    """XNAT's openid-provider.properties example: the same ids, patterns and issuers as the
    hub's two-provider overlay, and the hub accepts it as its xnat_openid_properties."""
    from xnat_oauth.xnat_properties import read_xnat_providers

    xnat = {p.id: p for p in read_xnat_providers(EXAMPLES / "xnat" / "openid-provider.properties")}
    values = site_values(MULTI)
    hub_side = {e["id"]: e for e in values["hub"]["config"]["XnatOAuthenticator"]["oidc_providers"]}
    assert list(xnat) == list(hub_side)
    for pid, entry in hub_side.items():
        x = xnat[pid]
        assert x.bearer_enabled and x.jwks_uri.startswith("https://") and x.accepted_audiences
        assert x.username_pattern == entry.get("username_pattern", "[providerId]_[sub]")
    for name, value in hub_env(values).items():
        monkeypatch.setenv(name, value)
    config = hub_config(values)
    config.XnatOAuthenticator.xnat_openid_properties = str(EXAMPLES / "xnat" / "openid-provider.properties")
    with mock.patch.object(XnatOAuthenticator, "_require_encryption"):
        auth = XnatOAuthenticator(config=config)
    assert [p.preset.issuer for p in auth.providers] == ["https://central.aaf.edu.au", "https://accounts.google.com"]


def test_swarm_config_with_several_providers(swarm_site, monkeypatch, tmp_path):
    for pid in ("aaf", "google"):
        secret_file = tmp_path / f"{pid}-secret"
        secret_file.write_text(f"{pid}-secret-not-secret-in-tests\n")
        monkeypatch.setenv(f"{pid.upper()}_CLIENT_ID", f"hub-{pid}")
        monkeypatch.setenv(f"{pid.upper()}_CLIENT_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("JH_OIDC_PROVIDERS", "aaf,google")
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(SWARM)).load_config()
    assert "oidc_provider" not in c.XnatOAuthenticator
    with mock.patch.object(XnatOAuthenticator, "_require_encryption"):
        auth = XnatOAuthenticator(config=c)
    auth.check_allow_config()
    assert [(p.id, p.client_id, p.client_secret) for p in auth.providers] == [
        ("aaf", "hub-aaf", "aaf-secret-not-secret-in-tests"),
        ("google", "hub-google", "google-secret-not-secret-in-tests"),
    ]
