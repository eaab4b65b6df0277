"""The docs build cleanly and the configuration reference matches the traits' help."""

import subprocess
import sys
from pathlib import Path

from scripts import gen_config_reference

REPO = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_generated_from_current_help():
    committed = gen_config_reference.OUT.read_text()
    assert committed == gen_config_reference.render(), (
        "docs/reference/configuration.md is stale: run python -m scripts.gen_config_reference"
    )


def test_every_setting_has_help():
    from xnat_oauth.authenticator import XnatOAuthenticator

    for name, trait in gen_config_reference.own_traits(XnatOAuthenticator):
        assert len((trait.help or "").strip()) > 20, f"{name} needs help text for the docs"


def test_mkdocs_build_strict(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()


def _properties_blocks(page: str) -> list[dict[str, str]]:
    import re

    blocks = re.findall(r"```properties\n(.*?)```", (REPO / "docs" / page).read_text(), re.S)
    return [dict(line.split("=", 1) for line in b.strip().splitlines()) for b in blocks]


def test_the_xnat_side_snippets_match_the_presets_and_name_every_required_setting():
    """Each preset's snippet: the exact issuer the hub verifies, its JWKS URL, and every
    property XNAT's Bearer path needs (a provider without issuer or jwksUri is refused)."""
    from xnat_oauth.identity import UsernamePattern
    from xnat_oauth.oidc.presets import PRESETS

    jwks = {
        "aaf": "https://central.aaf.edu.au/oidc/jwks",
        "google": "https://www.googleapis.com/oauth2/v3/certs",
        "mylogin": None,
    }
    blocks = {next(iter(b)).split(".")[1]: b for b in _properties_blocks("xnat-side.md")}
    assert set(blocks) == set(jwks)
    for pid, props in blocks.items():
        for key in ("bearer.enabled", "issuer", "jwksUri", "audCheck.acceptedAudiences", "usernamePattern",
                    "bearer.forceUserCreate"):
            assert f"openid.{pid}.{key}" in props, (pid, key)
        assert props[f"openid.{pid}.bearer.enabled"] == "true"
        UsernamePattern(props[f"openid.{pid}.usernamePattern"])  # one the hub accepts too
        if pid in PRESETS:
            assert props[f"openid.{pid}.issuer"] == PRESETS[pid].issuer
            assert props[f"openid.{pid}.jwksUri"] == jwks[pid]


def _attacks_and_tests() -> list[tuple[str, str]]:
    """(attack, test cell) of each row of security.md's table of attacks, faults and tests."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("## Attacks and faults, and the tests that show what the hub does", 1)[1]
    rows = []
    for line in section.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("Attack or fault",) and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[-1]))
    return rows


def test_every_attack_in_the_security_table_names_tests_that_exist():
    """Each row names at least one test (or "same test" as the row above), and every test,
    fixture or fault-matrix cell it names exists."""
    import fnmatch
    import re

    from tests.test_fault_matrix import CELLS

    cell_ids = [f"{step}-{fault}" for step, fault in CELLS]
    rows = _attacks_and_tests()
    assert len(rows) >= 25
    for attack, cell in rows:
        refs = re.findall(r"`([^`]+)`", cell)
        named = [r for r in refs if "::" in r]
        assert named or cell.startswith("same test"), f"no test named for: {attack}"
        current = None
        for ref in refs:
            if "::" in ref:
                path, _, name = ref.partition("::")
                current = path or current
                assert current, f"{ref!r} names no file ({attack})"
                source = (REPO / current).read_text()
                name = name.split("[", 1)[0]
                assert re.search(rf"^(async )?def {re.escape(name)}\(", source, re.M), f"{current}::{name} does not exist"
            elif "*" in ref:
                assert fnmatch.filter(cell_ids, ref), f"no fault-matrix cell matches {ref!r} ({attack})"
