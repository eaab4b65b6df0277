"""A real Docker engine (and Swarm) for the spawner tests, private to one test run.

``dockerd`` runs with its own data root, exec root and unix socket in temporary directories,
the vfs storage driver, no iptables, no bridge: containers and services use the host's
network only, so the hub reaches single-user servers on 127.0.0.1 and nothing is sent to a
private-range address. Swarm listens on 127.0.0.1 only, on ports picked by the kernel.

Also here: the host-network subclasses of DockerSpawner and SwarmSpawner the test hubs use
(with host networking there is no published port to look up: the server is where it listens).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
from dockerspawner import DockerSpawner, SwarmSpawner
from traitlets import default

_START_TIMEOUT = 60.0
_STOP_GRACE = 20.0


class EngineUnavailable(RuntimeError):
    """No Docker engine can be started here (no dockerd, not root, or it failed to start)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_udp_port_below_49152() -> int:
    """Swarm's VXLAN port must be in 1024-49151; the kernel's ephemeral range is above that."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 49152)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EngineUnavailable("no free UDP port for Swarm's data path")


def why_unavailable() -> str | None:
    """Why no engine can be started here, or None if one can be tried."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian package docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


class DockerEngine:
    """``DockerEngine().start()``; ``.host`` is the ``unix://`` URL, ``.client`` a docker client."""

    def __init__(self):
        # unix socket paths are limited to ~107 bytes: keep the roots short, under the system tmp
        self.root = Path(tempfile.mkdtemp(prefix="xo-dockerd-"))
        self.socket = self.root / "d.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.client: docker.DockerClient | None = None
        self._proc: subprocess.Popen | None = None
        self.swarm_port: int | None = None

    def start(self, timeout: float = _START_TIMEOUT) -> "DockerEngine":
        reason = why_unavailable()
        if reason:
            raise EngineUnavailable(reason)
        args = [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "-H", self.host,
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--bridge=none",
            "--log-level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        client = None
        while True:
            if self._proc.poll() is not None:
                raise EngineUnavailable(f"dockerd exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    # the client asks the engine for its API version when it is built
                    client = docker.DockerClient(base_url=self.host, timeout=30)
                    client.ping()
                    break
                except docker.errors.DockerException:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailable(f"dockerd not ready in {timeout:g}s:\n{self.log_tail()}")
            try:
                # doubles as the pause between polls and the early-exit check
                self._proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        self.client = client
        return self

    def swarm_init(self) -> None:
        """A one-node swarm on 127.0.0.1 (never on all interfaces, never on a fixed port)."""
        self.swarm_port = _free_port()
        self.client.swarm.init(
            advertise_addr="127.0.0.1",
            listen_addr=f"127.0.0.1:{self.swarm_port}",
            data_path_addr="127.0.0.1",
            data_path_port=_free_udp_port_below_49152(),
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Remove services, leave the swarm, stop dockerd by its pid, delete its directories."""
        client, self.client = self.client, None
        if client is not None:
            try:
                for svc in client.services.list():
                    svc.remove()
                if self.swarm_port:
                    client.swarm.leave(force=True)
                for net in client.networks.list(names=["docker_gwbridge"]):
                    net.remove()
                for c in client.containers.list(all=True):
                    c.remove(force=True)
            except docker.errors.DockerException:
                pass
            client.close()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc is not None:
            # containerd and shims dockerd started share its process group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    """dockerd may leave mounts (netns, shm) under its roots when killed; rmtree must not cross them."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root) + "/"
    points = sorted((line.split()[1] for line in mounts if line.split()[1].startswith(prefix)), reverse=True)
    for p in points:
        subprocess.run(["umount", "-l", p], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class HostNetworkDockerSpawner(DockerSpawner):
    """DockerSpawner on the host network: the server listens on ``ip:port`` of the host."""

    @default("use_internal_ip")
    def _no_port_bindings(self):
        # Docker refuses port bindings with host networking
        return True

    async def get_ip_and_port(self):
        return self.ip, self.port


class HostNetworkSwarmSpawner(SwarmSpawner):
    """SwarmSpawner whose services run on the host network, without published ports."""

    @default("use_internal_ip")
    def _no_published_ports(self):
        # published ports would go through Swarm's ingress network (a private range)
        return True

    async def get_ip_and_port(self):
        return self.ip, self.port
