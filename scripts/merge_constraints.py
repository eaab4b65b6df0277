"""Print a constraints file with some pins replaced: ``python -m scripts.merge_constraints BASE OVERRIDES``.

pip refuses two pins of one package (``-c a -c b``), so the oldest leg of CI's matrix gets one
file: every pin of BASE, with the packages OVERRIDES names pinned as OVERRIDES says.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _key(line: str) -> str | None:
    """The normalised project name a requirement line pins (PEP 503), or None for comments."""
    stripped = line.split("#", 1)[0].strip()
    m = _NAME.match(stripped)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else None


def merge(base: str, overrides: str) -> str:
    pins = {k: line.strip() for line in overrides.splitlines() if (k := _key(line))}
    out, seen = [], set()
    for line in base.splitlines():
        k = _key(line)
        if k in pins:
            out.append(pins[k])
            seen.add(k)
        else:
            out.append(line)
    missing = sorted(set(pins) - seen)
    if missing:
        # an override of a package the base does not pin would go untested in the newest leg
        raise SystemExit(f"overrides pin packages the base constraints do not: {', '.join(missing)}")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(merge(Path(argv[0]).read_text(), Path(argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
