"""What the password throttle's SQLite file costs a password attempt, measured in one run.

The throttle runs on the hub's event loop: every password attempt reads one row, every failure
writes one. This measures, in microseconds per attempt and as ratios within the run:

* ``memory``: the throttle with an in-memory SQLite database (the floor);
* ``file``: the shipped set-up, a file in WAL mode with ``synchronous=NORMAL`` (no fsync per commit);
* ``file_fsync``: the same with ``synchronous=FULL`` (an fsync per failure), the alternative;
* ``refused``: an attempt refused at the hard stop (one read, nothing written);
* ``xnat_password_check``: one wrong password sent to the XNAT emulator over loopback
  (``GET /data/services/tokens/issue`` with Basic auth), what every forwarded attempt costs anyway.

``python -m benchmarks.bench_throttle [--attempts N] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _throttle_us(path, attempts: int, *, fsync: bool = False) -> float:
    from xnat_oauth.throttle import Limit, LoginThrottle

    t = LoginThrottle(Limit(10**9, 3600), Limit(10**9, 3600), hard_stop=None, path=path)
    if fsync:
        t.store._db.execute("PRAGMA synchronous=FULL")
    names = [f"user{i % 500}" for i in range(attempts)]
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        t.begin(name, f"192.0.2.{i % 200}").failed()
    dt = time.perf_counter() - t0
    t.close()
    return dt / attempts * 1e6


def _refused_us(path, attempts: int) -> float:
    from xnat_oauth.throttle import Limit, LoginThrottle, ThrottleRefused

    t = LoginThrottle(Limit(10**9, 3600), Limit(10**9, 3600), hard_stop=1, path=path)
    t.begin("stopped", "192.0.2.1").failed()
    t0 = time.perf_counter()
    for _ in range(attempts):
        try:
            t.begin("stopped", "192.0.2.1")
        except ThrottleRefused:
            pass
    dt = time.perf_counter() - t0
    t.close()
    return dt / attempts * 1e6


async def _xnat_us(root: Path, attempts: int) -> float:
    from tests.world.xnat_emulator import XnatEmulator
    from xnat_oauth.errors import XnatAuthError
    from xnat_oauth.xnat_client import XnatClient

    with XnatEmulator(root=root, lockout_threshold=10**9) as emu:
        emu.add_user("someone", "right")
        async with XnatClient(emu.url, timeout=10, read_retries=0) as client:
            for _ in range(20):  # warm the connection pool
                try:
                    await client.issue_token(("someone", "wrong"))
                except XnatAuthError:
                    pass
            t0 = time.perf_counter()
            for _ in range(attempts):
                try:
                    await client.issue_token(("someone", "wrong"))
                except XnatAuthError:
                    pass
            return (time.perf_counter() - t0) / attempts * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_throttle", description=__doc__.splitlines()[0])
    p.add_argument("--attempts", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results" / "throttle.json")
    args = p.parse_args(argv)
    n = args.attempts
    runs: dict[str, list[float]] = {k: [] for k in ("memory", "file", "file_fsync", "refused", "xnat_password_check")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            runs["memory"].append(_throttle_us(None, n))
            runs["file"].append(_throttle_us(tmp / f"normal{r}.sqlite", n))
            runs["file_fsync"].append(_throttle_us(tmp / f"full{r}.sqlite", max(50, n // 10), fsync=True))
            runs["refused"].append(_refused_us(tmp / f"refused{r}.sqlite", n))
            runs["xnat_password_check"].append(asyncio.run(_xnat_us(tmp / f"xnat{r}", max(50, n // 10))))
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "benchmark": "password throttle cost per attempt (begin + failed), microseconds, medians of rounds",
        "settings": {"attempts_per_round": n, "rounds": args.rounds, "usernames": 500, "addresses": 200},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "us_per_attempt": {k: round(v, 1) for k, v in med.items()},
        "rounds_us": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratios": {
            "file_over_memory": round(med["file"] / med["memory"], 2),
            "file_fsync_over_file": round(med["file_fsync"] / med["file"], 2),
            "file_over_xnat_password_check": round(med["file"] / med["xnat_password_check"], 3),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for k, v in report["us_per_attempt"].items():
        print(f"{k:>22}: {v:9.1f} us/attempt")
    for k, v in report["ratios"].items():
        print(f"{k:>30}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
