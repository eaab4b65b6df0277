"""``xnat-oauth`` command line. Subcommands (``check``) come with the deployment work."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xnat-oauth",
        description="JupyterHub login and spawn hooks for XNAT sites.",
    )
    parser.add_argument("--version", action="version", version=f"xnat-oauth {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
