"""``xnat-oauth`` command line: ``check`` (see :mod:`xnat_oauth.check`), ``bindings``
(see :mod:`xnat_oauth.identity_bindings`) and ``throttle show|reset`` (see
:mod:`xnat_oauth.throttle_admin`)."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def _timeout(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < t <= 300:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 300 seconds")
    return t


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xnat-oauth",
        description="JupyterHub login and spawn hooks for XNAT sites.",
    )
    parser.add_argument("--version", action="version", version=f"xnat-oauth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="check a hub's configuration against XNAT and the identity provider",
        description=(
            "Load the hub's config as JupyterHub would (run it in the hub's environment) and "
            "print one PASS/FAIL/SKIP line per check, with the remedy for each failure. "
            "Exit status 1 if any check fails."
        ),
    )
    check.add_argument(
        "-f",
        "--config",
        dest="config_file",
        metavar="FILE",
        help="the hub's jupyterhub_config.py (default: ./jupyterhub_config.py, as JupyterHub)",
    )
    check.add_argument(
        "--bearer-token-file",
        metavar="FILE",
        help="a file holding a fresh token from the identity provider, to test that XNAT accepts "
        "it (the XNAT token XNAT issues for it is invalidated before the command exits)",
    )
    check.add_argument(
        "--xnat-timeout",
        type=_timeout,
        metavar="SECONDS",
        help="seconds to wait for each request to XNAT or the provider (default: the config's xnat_timeout)",
    )
    bindings = sub.add_parser(
        "bindings",
        help="list or release the OpenID identities bound to hub users",
        description=(
            "Each OpenID identity (issuer, sub) is bound to the hub user of its first login, and "
            "later logins must agree. Run in the hub's working directory (or give --state-file). "
            "Release a user's bindings after merging or renaming its account in XNAT."
        ),
    )
    bindings.add_argument(
        "--state-file",
        default="xnat-oauth.sqlite",
        metavar="FILE",
        help="the hub's c.XnatOAuthenticator.xnat_state_file (default: ./xnat-oauth.sqlite)",
    )
    what = bindings.add_subparsers(dest="action", metavar="ACTION", required=True)
    what.add_parser("list", help="one line per binding: hub user, provider, issuer, sub")
    release = what.add_parser("release", help="forget every identity bound to a hub user")
    release.add_argument("username", help="the hub user, exactly as the hub spells it")
    throttle = sub.add_parser(
        "throttle",
        help="show or clear the hub's counts of failed password logins",
        description=(
            "The hub stops checking passwords for a username after too many failures, to keep "
            "the XNAT account from being locked. These commands read and change its counts, with "
            "the hub running. Run them in the hub's working directory and environment."
        ),
    )
    tsub = throttle.add_subparsers(dest="throttle_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-f",
        "--config",
        dest="config_file",
        metavar="FILE",
        help="the hub's jupyterhub_config.py, for password_throttle_db and the limits "
        "(default: ./jupyterhub_config.py if there is one)",
    )
    common.add_argument("--db", metavar="PATH", help="the throttle's SQLite file (default: from the config)")
    show = tsub.add_parser(
        "show", parents=[common], help="list the counts, or show those of the usernames given"
    )
    show.add_argument("usernames", nargs="*", metavar="USERNAME")
    reset = tsub.add_parser(
        "reset",
        parents=[common],
        help="clear the counts of the usernames given (after the user logged in to XNAT directly)",
    )
    reset.add_argument("usernames", nargs="*", metavar="USERNAME")
    reset.add_argument(
        "--id", dest="ids", action="append", default=[], metavar="ID", help="an id from `show` instead of a name"
    )
    return parser


def _bindings(args) -> int:
    from pathlib import Path

    from .identity_bindings import IdentityBindings

    if not Path(args.state_file).is_file():
        print(f"xnat-oauth: no state file at {args.state_file}", file=sys.stderr)
        return 2
    store = IdentityBindings(args.state_file)
    try:
        if args.action == "list":
            for b in sorted(store.all(), key=lambda b: (b.username, b.issuer)):
                print(f"{b.username}\t{b.provider}\t{b.issuer}\t{b.sub}")
            return 0
        n = store.release(args.username)
        print(f"released {n} identit{'y' if n == 1 else 'ies'} of {args.username}")
        return 0 if n else 1
    finally:
        store.close()


def _throttle(args, parser) -> int:
    import time

    from . import throttle_admin as admin

    if args.throttle_command == "reset" and not (args.usernames or args.ids):
        parser.error("throttle reset: give at least one USERNAME or --id")
    try:
        s = admin.settings(args.config_file, args.db)
        if args.throttle_command == "show":
            return admin.show(s, args.usernames, sys.stdout, now=time.time())
        return admin.reset(s, args.usernames, args.ids, sys.stdout, now=time.time())
    except admin.AdminError as e:
        print(f"xnat-oauth throttle: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from .check import run

        return run(args.config_file, bearer_token_file=args.bearer_token_file, xnat_timeout=args.xnat_timeout)
    if args.command == "bindings":
        return _bindings(args)
    if args.command == "throttle":
        return _throttle(args, parser)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
