"""The package as shipped: what installing the wheel gives a site.

``make test`` runs the whole suite against the wheel installed in a fresh virtualenv
(``scripts/test_wheel.sh`` sets ``XNAT_OAUTH_TEST_INSTALLED=1`` and ``XNAT_OAUTH_SOURCE``); the
tests that need that install skip in a developer's editable run.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import spawn_hooks
import xnat_oauth
from scripts import check_release_version, merge_constraints
from tests.conftest import installed_package_problems

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = os.environ.get("XNAT_OAUTH_TEST_INSTALLED") == "1"
needs_wheel = pytest.mark.skipif(not INSTALLED, reason="an editable run: `make test` runs this against the wheel")
DIST = "xnat-oauth"


def requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in metadata.requires(DIST) or []]
    return {r.name: r for r in reqs if r.marker is None}


@needs_wheel
def test_the_package_under_test_is_the_installed_wheel():
    assert installed_package_problems() == []
    direct_url = metadata.distribution(DIST).read_text("direct_url.json")
    info = json.loads(direct_url or "{}")
    assert not info.get("dir_info", {}).get("editable"), info
    assert info.get("url", "").endswith(".whl"), info
    # the tests run from a copy of the checkout without the package
    assert not (ROOT / "xnat_oauth").exists() and not (ROOT / "spawn_hooks").exists()
    assert (ROOT / "tests" / "world").is_dir() and (ROOT / ".github" / "workflows").is_dir()


@needs_wheel
def test_the_wheel_ships_every_file_of_the_package_source():
    source = Path(os.environ["XNAT_OAUTH_SOURCE"])  # the checkout the wheel was built from
    expected = {
        p.relative_to(source).as_posix()
        for package in ("xnat_oauth", "spawn_hooks")
        for p in (source / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    shipped = {f.as_posix() for f in metadata.files(DIST) or []}
    assert {"xnat_oauth/oidc/__init__.py", "xnat_oauth/templates/login.html", "xnat_oauth/py.typed"} <= expected
    assert expected - shipped == set()
    assert {f for f in shipped if f.startswith(("tests/", "scripts/", "benchmarks/"))} == set()


def test_every_module_of_the_package_imports():
    names = [
        info.name
        for package in (xnat_oauth, spawn_hooks)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    ]
    assert "xnat_oauth.oidc.handlers" in names and "spawn_hooks.kube" in names
    for name in names:
        importlib.import_module(name)
    assert xnat_oauth.XnatOAuthenticator.__module__ == "xnat_oauth.authenticator"


def test_both_packages_are_typed():
    for package in (xnat_oauth, spawn_hooks):
        assert (Path(package.__file__).parent / "py.typed").is_file()


def test_version_is_one_everywhere_and_the_changelog_has_its_section():
    version = metadata.version(DIST)
    assert xnat_oauth.__version__ == version
    script = Path(sys.executable).parent / "xnat-oauth"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == f"xnat-oauth {version}"
    assert re.search(rf"^## \[{re.escape(version)}\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert re.search(r"^## \[Unreleased\]$", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_supported_ranges_have_upper_bounds_and_hold_what_is_installed():
    md = metadata.metadata(DIST)
    python = SpecifierSet(md["Requires-Python"])
    assert python == SpecifierSet(">=3.10,<3.14")
    assert Version(".".join(map(str, sys.version_info[:3]))) in python
    reqs = requirements()
    for name in ("jupyterhub", "oauthenticator"):
        spec = reqs[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name} {spec} has no upper bound"
        assert Version(metadata.version(name)) in spec, f"installed {name} is outside {spec}"
    # refresh_user_hook, which refresh_user runs, appeared in oauthenticator 17.3
    assert Version("17.2.0") not in reqs["oauthenticator"].specifier


def test_license_is_declared_once_and_shipped():
    md = metadata.metadata(DIST)
    assert md["License-Expression"] == "BSD-3-Clause"
    assert not md.get_all("License") and not [c for c in md.get_all("Classifier") or [] if c.startswith("License ::")]
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    if INSTALLED:
        assert metadata.distribution(DIST).read_text("licenses/LICENSE") == (ROOT / "LICENSE").read_text()


# -- the release's own scripts ------------------------------------------------------------------


def test_the_oldest_leg_replaces_the_pins_it_names_and_keeps_the_rest():
    base = "# pins\nJupyterHub==6.1.1\noauthenticator==17.4.0\nhttpx==0.28.1\n"
    merged = merge_constraints.merge(base, "# floors\njupyterhub==5.0.0\nOAuthenticator==17.3.0\n")
    assert merged.splitlines() == ["# pins", "jupyterhub==5.0.0", "OAuthenticator==17.3.0", "httpx==0.28.1"]
    with pytest.raises(SystemExit, match="tornado"):
        merge_constraints.merge(base, "tornado==6.0\n")


def test_the_real_oldest_leg_pins_the_floors_of_the_declared_ranges():
    merged = merge_constraints.merge(
        (ROOT / "requirements" / "constraints.txt").read_text(),
        (ROOT / "requirements" / "constraints-oldest.txt").read_text(),
    )
    pins = dict(line.split("==") for line in merged.splitlines() if "==" in line and not line.startswith("#"))
    reqs = requirements()
    for name in ("jupyterhub", "oauthenticator"):
        floor = min(Version(s.version) for s in reqs[name].specifier if s.operator == ">=")
        assert Version(pins[name]) == floor, f"the oldest leg tests {name} {pins[name]}, the floor is {floor}"


def _release_tree(tmp_path: Path, version: str, changelog: str) -> Path:
    (tmp_path / "xnat_oauth").mkdir()
    (tmp_path / "xnat_oauth" / "_version.py").write_text(f'__version__ = "{version}"\n')
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    dist = tmp_path / "dist"
    dist.mkdir()
    client = tmp_path / "token-client" / "xnat_oauth_token"
    client.mkdir(parents=True)
    (client / "__init__.py").write_text(f'__version__ = "{version}"\n')
    for name in (f"xnat_oauth-{version}-py3-none-any.whl", f"xnat_oauth-{version}.tar.gz",
                 f"xnat_oauth_token-{version}-py3-none-any.whl", f"xnat_oauth_token-{version}.tar.gz"):
        (dist / name).write_bytes(b"")
    return dist


GOOD_CHANGELOG = "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-12-01\n### Fixed\n- x\n### Upgrade notes\n- none\n"


def test_the_release_check_passes_when_tag_version_dist_and_changelog_agree(tmp_path):
    dist = _release_tree(tmp_path, "0.2.0", GOOD_CHANGELOG)
    assert check_release_version.problems("v0.2.0", dist, root=tmp_path) == []


@pytest.mark.parametrize(
    ("tag", "changelog", "said"),
    [
        ("v0.2.1", GOOD_CHANGELOG, "_version.py says 0.2.0"),
        ("0.2.0", GOOD_CHANGELOG, "is not v<major>"),
        ("v0.2.0", GOOD_CHANGELOG.replace("[0.2.0]", "[0.1.9]"), "no '## [0.2.0]' section"),
        ("v0.2.0", GOOD_CHANGELOG.replace("### Upgrade notes", "### Notes"), "no '### Upgrade notes'"),
    ],
)
def test_the_release_check_refuses_a_mismatch(tmp_path, tag, changelog, said):
    dist = _release_tree(tmp_path, "0.2.0", changelog)
    assert any(said in p for p in check_release_version.problems(tag, dist, root=tmp_path))


def test_the_release_check_refuses_a_dist_of_another_build(tmp_path):
    dist = _release_tree(tmp_path, "0.2.0", GOOD_CHANGELOG)
    (dist / "xnat_oauth-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert any("not exactly" in p for p in check_release_version.problems("v0.2.0", dist, root=tmp_path))


def test_the_notebook_client_is_released_with_the_package(tmp_path):
    dist = _release_tree(tmp_path, "0.2.0", GOOD_CHANGELOG)
    (dist / "xnat_oauth_token-0.2.0-py3-none-any.whl").unlink()
    assert any("not exactly" in p for p in check_release_version.problems("v0.2.0", dist, root=tmp_path))
    (tmp_path / "token-client" / "xnat_oauth_token" / "__init__.py").write_text('__version__ = "0.1.9"\n')
    assert any("xnat_oauth_token says 0.1.9" in p for p in check_release_version.problems("v0.2.0", dist, root=tmp_path))


def test_the_checkout_would_pass_the_release_check_given_its_dist():
    source = Path(os.environ.get("XNAT_OAUTH_SOURCE") or ROOT)
    version = check_release_version.package_version(source)
    assert version == xnat_oauth.__version__
    found = check_release_version.problems("v" + version, source / "no-dist-here", root=source)
    assert [p for p in found if "no-dist-here holds nothing" not in p] == []


def test_the_release_workflow_tests_the_wheel_before_trusted_publishing():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML reads the key `on` as True
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    build = "\n".join(step.get("run", "") for step in jobs["build"]["steps"])
    assert "python -m build" in build and "scripts.check_release_version" in build
    tests = "\n".join(step.get("run", "") for step in jobs["test"]["steps"])
    assert "scripts/test_wheel.sh" in tests
    legs = {(m["python"], m["leg"]) for m in jobs["test"]["strategy"]["matrix"].get("include", [])}
    pythons = set(jobs["test"]["strategy"]["matrix"]["python"])
    assert ("3.11", "oldest") in legs and pythons == {"3.10", "3.11", "3.12", "3.13"}
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"build", "lint", "test"}
    assert publish["environment"]["name"] == "pypi" and publish["permissions"] == {"id-token": "write"}
    assert [s["uses"] for s in publish["steps"] if "uses" in s][-1].startswith("pypa/gh-action-pypi-publish@")
    # only the publishing job may mint an OIDC token
    assert [name for name, job in jobs.items() if "id-token" in (job.get("permissions") or {})] == ["publish"]
