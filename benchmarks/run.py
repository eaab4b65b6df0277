"""Run the benchmarks: ``python -m benchmarks.run [NAME ...]`` (``make bench`` runs them all).

Every ``benchmarks/bench_<name>.py`` has a ``main(argv) -> int``; each runs in turn with its
defaults and writes its figures under ``benchmarks/results/``. Names (``login``, ``spawn``,
``throttle``, ``workshop``) pick some. The exit status is 1 if any benchmark failed or raised; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "bench_"


def discover() -> list[str]:
    """The benchmark names found beside this file, sorted (``bench_login.py`` -> ``login``)."""
    return sorted(
        m.name[len(PREFIX) :]
        for m in pkgutil.iter_modules([str(HERE)])
        if m.name.startswith(PREFIX) and not m.ispkg
    )


def run_one(name: str) -> bool:
    """Import ``benchmarks.bench_<name>`` and run its ``main([])``; True if it succeeded."""
    print(f"== {name} ==", flush=True)
    t0 = time.monotonic()
    try:
        module = importlib.import_module(f"{__package__ or 'benchmarks'}.{PREFIX}{name}")
        status = module.main([])
    except Exception:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        status = 1
    ok = not status
    print(f"== {name}: {'ok' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s ==\n", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    available = discover()
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {available})")
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(available))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; available: {available}")
    failed = [name for name in (args.names or available) if not run_one(name)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
