"""Refuse to publish unless the tag, the package's version and the changelog agree.

    python -m scripts.check_release_version v0.2.0 [DIST_DIR]

The version lives in ``xnat_oauth/_version.py`` (what ``xnat-oauth --version`` prints); a release
is the tag ``v`` + that version. This checks that the tag names it (and the notebook client's
version in ``token-client/``), that every file in DIST_DIR (default ``dist``) was built from it (the
package's and the client's sdist and wheel), and that CHANGELOG.md has its section with upgrade notes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TAG = re.compile(r"^v(\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?)$")


def package_version(root: Path = ROOT) -> str:
    """``__version__`` from ``xnat_oauth/_version.py``, read without importing the package."""
    text = (root / "xnat_oauth" / "_version.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise SystemExit("xnat_oauth/_version.py has no __version__ = \"...\" line")
    return m.group(1)


def client_version(root: Path = ROOT) -> str | None:
    """``__version__`` of the notebook client (token-client/), released with the package."""
    path = root / "token-client" / "xnat_oauth_token" / "__init__.py"
    if not path.exists():
        return None
    m = re.search(r'^__version__ = "([^"]+)"$', path.read_text(), re.M)
    return m.group(1) if m else ""


def problems(tag: str, dist: Path, root: Path = ROOT) -> list[str]:
    found = []
    m = _TAG.match(tag)
    if not m:
        return [f"tag {tag!r} is not v<major>.<minor>.<patch> (optionally a/b/rc<N>)"]
    version = m.group(1)
    package = package_version(root)
    if package != version:
        found.append(f"tag {tag} but xnat_oauth/_version.py says {package}")
    files = sorted(p.name for p in dist.glob("*")) if dist.is_dir() else []
    wanted = {f"xnat_oauth-{version}-py3-none-any.whl", f"xnat_oauth-{version}.tar.gz"}
    client = client_version(root)
    if client is not None:
        # the notebook client (token-client/) is released with the package, same version
        if client != version:
            found.append(f"tag {tag} but token-client/xnat_oauth_token says {client}")
        wanted |= {f"xnat_oauth_token-{version}-py3-none-any.whl", f"xnat_oauth_token-{version}.tar.gz"}
    if set(files) != wanted:
        found.append(f"{dist} holds {files or 'nothing'}, not exactly {sorted(wanted)}")
    changelog = (root / "CHANGELOG.md").read_text()
    section = re.search(rf"^## \[{re.escape(version)}\][^\n]*\n(.*?)(?=^## \[|\Z)", changelog, re.M | re.S)
    if not section:
        found.append(f"CHANGELOG.md has no '## [{version}]' section")
    elif "### Upgrade notes" not in section.group(1):
        found.append(f"CHANGELOG.md's section for {version} has no '### Upgrade notes'")
    return found


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    found = problems(argv[0], Path(argv[1] if len(argv) == 2 else "dist"))
    for problem in found:
        print(f"release check: {problem}", file=sys.stderr)
    if not found:
        print(f"release check: {argv[0]} = xnat-oauth {package_version()}, dist and changelog agree")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
