"""What every adapter shares: restore the spawner's configured values before applying a plan.

A spawner object lives as long as the hub and runs the pre-spawn hook at every start; an
adapter that appended to ``mounts`` or ``environment`` in place would pile up the previous
launch's data (another project, an old token) in the next one. So the configured values are
remembered at the first spawn and every plan is applied to a fresh copy of them.
"""

from __future__ import annotations

import copy
from typing import Iterable

_ATTR = "_xnat_spawn_hooks_base"


def configured(spawner, names: Iterable[str]) -> dict:
    """Deep copies of the spawner's values of ``names`` as they were before any plan."""
    base = spawner.__dict__.get(_ATTR)
    if base is None:
        base = {}
        spawner.__dict__[_ATTR] = base
    for name in names:
        if name not in base:
            base[name] = copy.deepcopy(getattr(spawner, name))
    return {name: copy.deepcopy(base[name]) for name in names}


def braces(value: str) -> str:
    """Escape a literal for ``str.format``: KubeSpawner and DockerSpawner's volume naming
    format every string, so a secret or path with ``{`` would crash or be rewritten."""
    return value.replace("{", "{{").replace("}", "}}")
