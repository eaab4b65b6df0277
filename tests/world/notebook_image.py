"""A single-user server image built locally, without any registry, in well under a second.

No registry is reachable, and a Debian root file system with Python would be hundreds of
megabytes that the vfs storage driver copies for every container. So the image is a tiny
``docker import`` of a skeleton root (``/etc/passwd``, ``/tmp``, the merged-/usr links), and
the interpreter comes from the host: ``/usr``, the Python installation and the test
virtualenv are bind-mounted read-only at their own paths, so ``jupyterhub-singleuser``
runs exactly the JupyterHub the hub runs.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time

IMAGE = "xnat-oauth/singleuser:test"

_PASSWD = "root:x:0:0:root:/root:/bin/sh\njovyan:x:1000:100::/home/jovyan:/bin/sh\n"
_GROUP = "root:x:0:\nusers:x:100:\n"
_DIRS = {"/etc": 0o755, "/tmp": 0o1777, "/root": 0o700, "/home/jovyan": 0o755, "/data": 0o755,
         "/workspace": 0o755, "/proc": 0o555, "/sys": 0o555, "/dev": 0o755, "/run": 0o755, "/usr": 0o755,
         "/var/tmp": 0o1777}
_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}


def venv() -> str:
    return sys.prefix


def python_home() -> str:
    """The real installation behind the virtualenv's interpreter."""
    return os.path.realpath(sys.base_prefix)


def host_mounts() -> dict[str, str]:
    """Host directories the container needs read-only, each at its own path."""
    dirs = ["/usr", python_home(), venv()]
    out = {}
    for d in dirs:
        if not any(d == p or d.startswith(p + "/") for p in out):
            out[d] = d
    return out


def singleuser_cmd() -> list[str]:
    return [os.path.join(venv(), "bin", "jupyterhub-singleuser")]


def python_in_container() -> str:
    return os.path.join(venv(), "bin", "python")


def _rootfs_tar() -> bytes:
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, mode in sorted(_DIRS.items()):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = tarfile.TarInfo("/".join(parts[:i]))
                parent.type, parent.mode, parent.mtime = tarfile.DIRTYPE, 0o755, now
                tar.addfile(parent)
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)
        for path, target in _LINKS.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, now
            tar.addfile(info)
        for path, text in (("/etc/passwd", _PASSWD), ("/etc/group", _GROUP)):
            data = text.encode()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(client) -> str:
    """Import the skeleton as ``IMAGE`` into the engine behind ``client``; return its name."""
    repo, tag = IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(_rootfs_tar(), repository=repo, tag=tag)
    client.images.get(IMAGE)  # raises if the import did not produce the image
    return IMAGE
