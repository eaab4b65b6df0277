"""Write docs/reference/configuration.md from the traits' own help text.

The help strings are the single source: run ``python -m scripts.gen_config_reference`` after
changing a trait; ``tests/test_docs.py`` fails when the committed page is out of date.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from traitlets import HasTraits, Undefined

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "reference" / "configuration.md"

# (import path, class name, what the section is for)
SECTIONS = [
    ("xnat_oauth.authenticator", "XnatOAuthenticator", "The authenticator (`c.XnatOAuthenticator.*`)."),
    ("spawn_hooks.config", "XnatSpawnHooks", "The spawn hooks (`c.XnatSpawnHooks.*`)."),
]


def _default(trait, cls) -> str:
    dv = trait.default_value
    # Defaults computed at run time (environment variables, presets) are described in the help.
    if dv is Undefined or inspect.isfunction(dv) or any(
        n.startswith("_") and n.endswith("_default") and n[1:-8] == trait.name for n in dir(cls)
    ):
        return "see help"
    return f"`{dv!r}`"


def own_traits(cls) -> list:
    """Traits a class of ours declares (not the ones inherited from JupyterHub/oauthenticator)."""
    ours = [c for c in cls.__mro__ if c.__module__.split(".")[0] in ("xnat_oauth", "spawn_hooks")]
    names = set()
    for c in ours:
        names |= {n for n, v in vars(c).items() if hasattr(v, "metadata") and getattr(v, "metadata", {}).get("config")}
    return [(n, cls.class_traits()[n]) for n in sorted(names)]


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the settings' help text by `python -m scripts.gen_config_reference`; do not edit by hand.",
        "Settings inherited from JupyterHub and oauthenticator (`client_id`, `client_secret`, `oauth_callback_url`,",
        "`allowed_users`, `admin_users`, ...) keep their upstream meaning and are not repeated here.",
        "",
    ]
    for mod, name, what in SECTIONS:
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        assert issubclass(cls, HasTraits)
        out += [f"## {name}", "", what, ""]
        for tname, trait in own_traits(cls):
            help_text = inspect.cleandoc(trait.help or "").strip() or "(no help)"
            out += [
                f"### `{name}.{tname}`",
                "",
                f"*{type(trait).__name__}*, default {_default(trait, cls)}",
                "",
                help_text,
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
