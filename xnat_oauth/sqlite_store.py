"""What the hub's SQLite stores share: opening the state file, and a write transaction.

The identity bindings and the per-server tokens live in one file (``xnat_state_file``), the
password throttle in a file of its own; all three run several hub processes' worth of writers
(a restart overlapping the old hub, the admin commands) against one file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path


def open_state_db(path: Path, schema: Iterable[str]) -> sqlite3.Connection:
    """A connection to ``path`` (created with its folder), in WAL mode, with ``schema`` applied.

    Autocommit (``isolation_level=None``): every write outside :func:`write_transaction` is one
    statement, committed at once; a writer waits up to 10 s for another's lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in schema:
        db.execute(statement)
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads and writes as one: the write lock is taken at the start (``BEGIN IMMEDIATE``), so a
    check made inside still holds when the write commits; any exception rolls it all back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
