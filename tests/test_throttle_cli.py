"""``xnat-oauth throttle show|reset`` on the file a running throttle uses."""

from __future__ import annotations

import re

import pytest

from xnat_oauth.cli import main
from xnat_oauth.throttle import HARD_STOP, Limit, LoginThrottle, ThrottleRefused


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """The hub's working directory, with a throttle (as the running hub holds it) in its file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jupyterhub_config.py").write_text(
        "c.XnatOAuthenticator.password_throttle_db = 'state/throttle.sqlite'\n"
        "c.XnatOAuthenticator.password_failures_reserved_for_xnat = 14\n"  # hard stop at 6
    )
    t = LoginThrottle(Limit(100, 60), Limit(1000, 60), hard_stop=6, path=tmp_path / "state" / "throttle.sqlite")
    for _ in range(6):
        t.begin("Alice", "192.0.2.1").failed()
    t.begin("bob", "192.0.2.1").failed()
    t.begin("carol", "192.0.2.1").inconclusive()
    yield t
    t.close()


def run(capsys, *argv):
    code = main(["throttle", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_lists_counts_by_id_without_names(hub_dir, capsys):
    code, out, _ = run(capsys, "show")
    assert code == 0
    assert "state/throttle.sqlite (3 usernames counted; hard stop at 6 failures)" in out
    rows = [ln.split() for ln in out.splitlines() if re.match(r"^[0-9a-f]{12} ", ln)]
    got = [(r[1], r[2], r[-1]) for r in rows]
    assert got[0] == ("6", "0", "stopped")  # the highest count first
    assert sorted(got[1:]) == [("0", "1", "counting"), ("1", "0", "counting")]
    assert "alice" not in out.lower() and "bob" not in out


def test_show_and_reset_by_name_take_effect_in_the_running_hub(hub_dir, capsys):
    with pytest.raises(ThrottleRefused) as ei:
        hub_dir.begin("alice", "192.0.2.9")
    assert ei.value.reason == HARD_STOP

    code, out, _ = run(capsys, "show", "ALICE", "dave")
    assert code == 0
    assert "ALICE: 6 of 6 failed attempts since the last successful password login" in out
    assert "stopped (the hub forwards no password for it)" in out
    assert "dave: nothing counted" in out

    code, out, _ = run(capsys, "reset", "alice", "dave")
    assert code == 0
    assert "alice: cleared 6 failed attempts" in out and "dave: nothing to clear" in out
    assert "logged in to XNAT directly" in out
    hub_dir.begin("alice", "192.0.2.9").failed()  # the hub sees the reset at once


def test_reset_by_id(hub_dir, capsys):
    _, out, _ = run(capsys, "show")
    stopped = next(ln.split()[0] for ln in out.splitlines() if ln.endswith("stopped"))
    code, out, _ = run(capsys, "reset", "--id", stopped[:8])
    assert code == 0 and "cleared 6 failed attempts" in out
    assert hub_dir.state("alice") is None
    code, _, err = run(capsys, "reset", "--id", stopped[:8])
    assert code == 1 and "matches no username" in err
    code, _, err = run(capsys, "reset", "--id", "abc")
    assert code == 1 and "at least 8 hex digits" in err


def test_a_missing_file_or_an_in_memory_hub_is_explained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "show")
    assert code == 1 and "no throttle file at" in err and "--db" in err
    assert not (tmp_path / "xnat-oauth-throttle.sqlite").exists()  # never created by the command
    (tmp_path / "jupyterhub_config.py").write_text("c.XnatOAuthenticator.password_throttle_db = ''\n")
    code, _, err = run(capsys, "show")
    assert code == 1 and "in memory" in err


def test_db_option_wins_over_the_config(hub_dir, tmp_path, capsys):
    other = tmp_path / "other_config.py"
    other.write_text("c.XnatOAuthenticator.password_throttle_db = 'nowhere.sqlite'\n")
    code, out, _ = run(capsys, "show", "-f", str(other), "--db", "state/throttle.sqlite", "bob")
    assert code == 0 and "bob: 1 of 10 failed attempts" in out  # the file from --db, limits from -f


def test_reset_needs_a_name(hub_dir, capsys):
    with pytest.raises(SystemExit):
        main(["throttle", "reset"])
