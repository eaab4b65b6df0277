"""`make demo`'s program, run as a user runs it: scripted logins with the demo accounts through
the real hub end with an auth_state whose alias token the emulator validates as that user; the
AAF user starts a real single-user server and finds the project data, a workspace, the sample
notebook and their own token in its environment; Ctrl-C leaves no process and no port behind."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pydicom
import pytest

from tests.world.browser import HubBrowser
from tests.world.hub import port_is_listening, process_alive
from tests.world.idp_login import login_via_idp

REPO = Path(__file__).resolve().parents[1]
SPAWN_TIMEOUT = 30.0

# Executes a notebook's code cells in order, as IPython would (top-level await included),
# for a check of the sample notebook without a kernel (ipykernel is not a test dependency).
_RUN_CELLS = r"""
import ast, asyncio, inspect, json, sys
nb = json.load(open(sys.argv[1]))
scope = {"__name__": "__main__"}
loop = asyncio.new_event_loop()
for cell in nb["cells"]:
    if cell["cell_type"] != "code":
        continue
    src = "".join(cell["source"])
    code = compile(src, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, scope)
    if inspect.iscoroutine(result):
        loop.run_until_complete(result)
"""


def start_demo(workdir: Path) -> tuple[subprocess.Popen, dict]:
    """Run ``make demo``'s program; return once its banner says everything is up."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--port", "0", "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    # The banner's last line is the signal that everything is up (bounded by the hub's own start-up limits).
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line or len(lines) > 400:
            break
    assert (workdir / "demo.json").exists(), "".join(lines)
    state = json.loads((workdir / "demo.json").read_text())
    state["banner"] = "".join(lines)
    state["workdir"] = str(workdir)
    return proc, state


def interrupt(proc: subprocess.Popen) -> int:
    """Ctrl-C, as in the terminal the demo runs in; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    proc.stdout.close()
    return code


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    proc, state = start_demo(tmp_path_factory.mktemp("demo"))
    yield proc, state
    interrupt(proc)


async def validate_as(xnat_url, alias, secret) -> str | None:
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{xnat_url}/data/services/tokens/validate/{alias}/{secret}", auth=(alias, secret))
        r.raise_for_status()
        return r.json()["valid"]


async def hub_user(state, name):
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(
            f"{state['hub_url']}/hub/api/users/{quote(name, safe='')}",
            headers={"Authorization": f"token {state['hub_api_token']}"},
        )
        r.raise_for_status()
        return r.json()


async def user_auth_state(state, name):
    return (await hub_user(state, name))["auth_state"]


async def wait_until_ready(state, name) -> dict:
    """Follow the hub's progress event stream until the server is ready (bounded)."""
    url = f"{state['hub_url']}/hub/api/users/{quote(name, safe='')}/server/progress"
    headers = {"Authorization": f"token {state['hub_api_token']}"}

    async def follow() -> dict:
        async with httpx.AsyncClient(trust_env=False, timeout=SPAWN_TIMEOUT) as c:
            async with c.stream("GET", url, headers=headers) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[len("data:") :])
                    if event.get("ready") or event.get("failed"):
                        return event
        raise AssertionError("progress stream ended before the server was ready")

    event = await asyncio.wait_for(follow(), SPAWN_TIMEOUT)
    assert event.get("ready"), event
    return event


def descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (by parent pid), however deep."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return {p for p in found if process_alive(p)}


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel shows them) with a TCP socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, st = row.split()[1], row.split()[3]
            addr, _, hex_port = local.rpartition(":")
            if st == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


class SingleUser:
    """The user's browser session on their single-user server's REST API (through the proxy)."""

    def __init__(self, browser: HubBrowser, name: str):
        self.b = browser
        self.prefix = f"/user/{quote(name, safe='')}/"
        self.base = browser.base_url + self.prefix

    async def log_in(self) -> None:
        """A browser's first visit to a page of the server: the server sends it through the
        hub's OAuth and sets its own cookie (and ``_xsrf``) on the way back."""
        await self.b.follow(await self.b.get(self.base + "files/"), max_steps=10)
        cookies = {c.name for c in self.b.client.cookies.jar if c.path == self.prefix}
        assert any(n.startswith("jupyterhub-user-") for n in cookies), cookies

    def _headers(self) -> dict:
        xsrf = self.b.xsrf_cookie(self.base)
        assert xsrf, "no _xsrf cookie from the single-user server"
        return {"X-XSRFToken": xsrf, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty",
                "Sec-Fetch-Site": "same-origin", "Accept": "application/json"}

    async def contents(self, path: str, method: str = "GET", **kw) -> httpx.Response:
        url = self.base + "api/contents/" + quote(path)
        return await self.b.client.request(method, url, headers=self._headers(), **kw)


@pytest.fixture(scope="module")
def aaf_server(demo):
    """The AAF user logged in with a browser and clicked 'Start My Server'; their server is up."""
    _, state = demo
    name = state["aaf_username"]

    async def start() -> dict:
        async with HubBrowser(state["hub_url"]) as b:
            resp = await login_via_idp(b.client, state["hub_url"] + "/hub/oauth_login", state["aaf_login"])
            assert resp.status_code == 302, resp.text
            resp = await b.get(f"/hub/spawn/{quote(name, safe='')}")
            assert resp.status_code in (200, 302), resp.text
            await wait_until_ready(state, name)
            server = (await hub_user(state, name))["servers"][""]
            return {"name": name, "pid": server["state"]["pid"], "cookies": list(b.client.cookies.jar)}

    info = asyncio.run(start())
    info["env"] = process_env(info["pid"])
    return info


@contextlib.asynccontextmanager
async def single_user(state, server):
    """The user's browser (their hub cookies) logged in to their single-user server."""
    async with HubBrowser(state["hub_url"]) as b:
        for cookie in server["cookies"]:
            b.client.cookies.jar.set_cookie(cookie)
        su = SingleUser(b, server["name"])
        await su.log_in()
        yield su


async def test_banner_prints_the_url_and_demo_passwords(demo):
    _, state = demo
    assert f"{state['hub_url']}/hub/login" in state["banner"]
    assert state["passwords"]["alice"] in state["banner"]
    assert state["hub_url"].startswith("http://127.0.0.1:")
    # honest about what links and file modes protect
    assert "not root" in state["banner"]


async def test_demo_password_login_stores_a_token_xnat_validates_as_alice(demo):
    _, state = demo
    async with HubBrowser(state["hub_url"]) as b:
        resp = await b.password_login("alice", state["passwords"]["alice"])
        assert resp.status_code == 302, resp.text
        assert (await b.home()).status_code == 200
    token = (await user_auth_state(state, "alice"))["xnat"]["token"]
    assert await validate_as(state["xnat_url"], token["alias"], token["secret"]) == "alice"


async def test_demo_aaf_login_stores_a_token_xnat_validates_as_that_user(demo):
    _, state = demo
    async with HubBrowser(state["hub_url"]) as b:
        resp = await login_via_idp(b.client, state["hub_url"] + "/hub/oauth_login", state["aaf_login"])
        assert resp.status_code == 302, resp.text
    name = state["aaf_username"]
    token = (await user_auth_state(state, name))["xnat"]["token"]
    assert await validate_as(state["xnat_url"], token["alias"], token["secret"]) == name


async def test_demo_google_login_beside_aaf_and_the_password_form(demo):
    _, state = demo
    async with HubBrowser(state["hub_url"]) as b:
        _, html = await b.login_page()
        assert html.index("Log in with AAF") < html.index("Log in with Google") < html.index("xnat_password_form")
        resp = await login_via_idp(b.client, state["hub_url"] + "/hub/oauth_login/google", state["google_login"])
        assert resp.status_code == 302, resp.text
    name = state["google_username"]
    assert name.startswith("google-")
    token = (await user_auth_state(state, name))["xnat"]["token"]
    assert await validate_as(state["xnat_url"], token["alias"], token["secret"]) == name


async def test_server_environment_holds_the_users_own_token_and_listens_on_loopback(demo, aaf_server):
    _, state = demo
    env, name = aaf_server["env"], aaf_server["name"]
    assert env["XNAT_HOST"] == state["xnat_url"]
    assert await validate_as(state["xnat_url"], env["XNAT_USER"], env["XNAT_PASS"]) == name
    # no credential of the hub's own reaches the notebook, and the user's never reaches a log
    assert "JH_XNAT_PASSWORD" not in env and "JUPYTERHUB_CRYPT_KEY" not in env
    log = Path(state["workdir"], "hub", "hub.log").read_text()
    assert env["XNAT_PASS"] not in log and state["passwords"]["jupyterhub"] not in log
    service = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
    assert service.hostname == "127.0.0.1"
    assert listening_addresses(service.port) == {"0100007F"}  # 127.0.0.1, nothing else


async def test_server_shows_the_users_projects_and_their_dicom_files(demo, aaf_server):
    _, state = demo
    env = aaf_server["env"]
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{state['xnat_url']}/data/projects", params={"format": "json"},
                        auth=(env["XNAT_USER"], env["XNAT_PASS"]))
    readable = {row["ID"] for row in r.json()["ResultSet"]["Result"]}
    assert {"DEMO_CT", "DEMO_MR"} <= readable

    async with single_user(state, aaf_server) as su:
        listing = await su.contents("data/projects")
        assert listing.status_code == 200, listing.text
        assert {item["name"] for item in listing.json()["content"]} == readable
        scan = "data/projects/DEMO_CT/experiments/DEMO_CT_E00001/SCANS/1/DICOM"
        files = await su.contents(scan)
        assert files.status_code == 200, files.text
        assert [item["name"] for item in files.json()["content"]] == ["CT_small.dcm"]
        dcm = await su.contents(f"{scan}/CT_small.dcm", params={"type": "file", "format": "base64"})
        assert dcm.status_code == 200, dcm.text
        ds = pydicom.dcmread(io.BytesIO(base64.b64decode(dcm.json()["content"])))
        assert ds.Modality == "CT"


async def test_data_is_read_only_by_mode_and_the_workspace_takes_new_files(demo, aaf_server):
    _, state = demo
    name = aaf_server["name"]
    for dirpath, dirnames, filenames in os.walk(state["archive_root"]):
        for p in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            assert not os.lstat(p).st_mode & 0o222, f"{p} is writable by mode"

    async with single_user(state, aaf_server) as su:
        nb = await su.contents(f"workspace/{name}/xnat-demo.ipynb")
        assert nb.status_code == 200 and nb.json()["type"] == "notebook", nb.text
        new = await su.contents(f"workspace/{name}/from-the-test.txt", "PUT",
                                json={"type": "file", "format": "text", "content": "hello\n"})
        assert new.status_code == 201, new.text
        on_disk = Path(state["workspace_root"], "users", name, "from-the-test.txt")
        assert on_disk.read_text() == "hello\n"
        if os.geteuid() != 0:
            # the OS enforces the modes for anyone but root
            refused = await su.contents("data/projects/DEMO_CT/resources/x.txt", "PUT",
                                        json={"type": "file", "format": "text", "content": "no"})
            assert refused.status_code == 403, refused.text
            assert not Path(state["archive_root"], "DEMO_CT", "resources", "x.txt").exists()


async def test_sample_notebook_runs_with_the_servers_environment(demo, aaf_server):
    _, state = demo
    env, name = aaf_server["env"], aaf_server["name"]
    workspace = Path(env["JUPYTERHUB_ROOT_DIR"], "workspace", name)
    notebook = workspace / "xnat-demo.ipynb"
    # a kernel starts in the notebook's directory with the server's environment
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _RUN_CELLS, str(notebook)],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert f"XNAT says I am: {name}" in out
    assert "DEMO_CT" in out and "DEMO_MR" in out
    assert "Modality: CT" in out
    assert env["XNAT_PASS"] not in out + run.stderr
    assert Path(state["workspace_root"], "users", name, "hello-from-the-demo.txt").read_text() == f"{name} was here\n"


def test_ctrl_c_stops_every_process_it_started(demo, aaf_server):
    proc, state = demo
    started = descendants(proc.pid)
    assert aaf_server["pid"] in started
    server_port = urlsplit(aaf_server["env"]["JUPYTERHUB_SERVICE_URL"]).port
    assert interrupt(proc) == 0
    left = {pid for pid in started if process_alive(pid)}
    assert not left, f"still running: {left}"
    for name, port in {**state["ports"], "single-user": server_port}.items():
        assert not port_is_listening(port), f"{name} still listening on {port}"


def test_ctrl_c_after_the_hub_crashed_still_stops_its_servers_and_proxy(tmp_path):
    """A hub killed outright leaves its single-user servers (own sessions) and its proxy running."""
    proc, state = start_demo(tmp_path / "demo")
    try:

        async def start_alice() -> int:
            async with HubBrowser(state["hub_url"]) as b:
                resp = await b.password_login("alice", state["passwords"]["alice"])
                assert resp.status_code == 302, resp.text
                assert (await b.get("/hub/spawn/alice")).status_code in (200, 302)
            await wait_until_ready(state, "alice")
            return (await hub_user(state, "alice"))["servers"][""]["state"]["pid"]

        server_pid = asyncio.run(start_alice())
        started = descendants(proc.pid)
        hub_pid = int(Path(state["workdir"], "hub", "jupyterhub.pid").read_text())
        assert {server_pid, hub_pid} <= started
        os.kill(hub_pid, signal.SIGKILL)
    finally:
        code = interrupt(proc)
    assert code == 0
    left = {pid for pid in started if process_alive(pid)}
    assert not left, f"still running: {left}"
    for name, port in state["ports"].items():
        assert not port_is_listening(port), f"{name} still listening on {port}"


def test_read_only_archive_spares_link_targets_and_a_rerun_can_remove_it(tmp_path):
    from scripts.demo import make_read_only, remove_tree

    outside = tmp_path / "outside.txt"
    outside.write_text("not the archive's\n")
    root = tmp_path / "archive"
    (root / "P" / "arc001").mkdir(parents=True)
    (root / "P" / "arc001" / "scan.dcm").write_bytes(b"DICM")
    (root / "P" / "link").symlink_to(outside)
    make_read_only(root)
    for p in (root, root / "P", root / "P" / "arc001", root / "P" / "arc001" / "scan.dcm"):
        assert not os.lstat(p).st_mode & 0o222, p
    assert os.stat(outside).st_mode & 0o200
    remove_tree(root)
    assert not root.exists() and outside.read_text() == "not the archive's\n"
