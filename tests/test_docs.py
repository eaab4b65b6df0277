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
