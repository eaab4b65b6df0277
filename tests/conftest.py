"""Test world: every peer is real and listens on 127.0.0.1 only.

Fixtures live beside the peers they start, in tests/world/fixtures_*.py.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.world.fixtures_xnat",
    "tests.world.fixtures_oidc",
    "tests.world.fixtures_hub",
    "tests.world.rogue_idp",
    "tests.world.fixtures_docker",
]


def installed_package_problems() -> list[str]:
    """Why the package under test is not the installed wheel (empty when it is).

    ``scripts/test_wheel.sh`` sets ``XNAT_OAUTH_TEST_INSTALLED=1``: then ``xnat_oauth`` and
    ``spawn_hooks`` must come from this virtualenv's site-packages, not from a checkout on sys.path.
    """
    import spawn_hooks
    import xnat_oauth

    problems = []
    if sys.prefix == sys.base_prefix:
        problems.append(f"not running in a virtualenv ({sys.executable})")
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for module in (xnat_oauth, spawn_hooks):
        path = Path(module.__file__ or "").resolve()
        if site not in path.parents:
            problems.append(f"{module.__name__} is imported from {path}, not from {site}")
    return problems


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("XNAT_OAUTH_TEST_INSTALLED") == "1":
        problems = installed_package_problems()
        if problems:
            raise pytest.UsageError("testing the installed wheel, but " + "; ".join(problems))


# -- product and world counts ------------------------------------------------------------------
# Tests marked `world` check the test world (emulator, provider, hub fixtures, docker engine),
# not the product: the summary says how many of each ran, so the product's count is honest.

_WORLD_TESTS: set[str] = set()
_WORST_FIRST = ("failed", "error", "xpassed", "passed", "xfailed", "skipped")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _WORLD_TESTS.update(item.nodeid for item in items if item.get_closest_marker("world"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    outcomes: dict[str, dict[str, str]] = {"product": {}, "world": {}}
    for outcome in reversed(_WORST_FIRST):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid or getattr(report, "when", None) is None:
                continue  # collection reports and warnings
            kind = "world" if nodeid in _WORLD_TESTS else "product"
            outcomes[kind][nodeid] = outcome  # worse outcomes are seen later and win
    parts = []
    for kind, seen in outcomes.items():
        counts = {o: list(seen.values()).count(o) for o in _WORST_FIRST}
        detail = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
        parts.append(f"{kind} tests: {len(seen)}" + (f" ({detail})" if detail else ""))
    terminalreporter.write_line("xnat-oauth " + "; ".join(parts))
