"""pytest fixtures for the XNAT emulator (registered as a plugin by tests/conftest.py).

* ``xnat_emulator_session``: one emulator for the whole run, rooted in a tmp dir.
* ``xnat``: that emulator, made fresh for each test: faults, lockouts, sessions, the call log
  and stored user-options are cleared before the test, and whatever the test adds (users,
  projects, tokens, preferences, Bearer providers) is taken away after it, so session-level
  set-up survives and tests cannot leak into each other.
* ``make_xnat``: a factory for a test's own emulator with other settings (a fake clock, a low
  lockout threshold, a ``site_url``); each is stopped after the test.
* ``demo_xnat``: a separate emulator seeded like the demo (``XnatEmulator.demo``), for the
  whole run; treat it as read-only.
"""

from __future__ import annotations

import pytest

from .xnat_emulator import XnatEmulator


@pytest.fixture(scope="session")
def xnat_emulator_session(tmp_path_factory):
    emu = XnatEmulator(root=tmp_path_factory.mktemp("xnat")).start()
    yield emu
    emu.stop()


@pytest.fixture
def xnat(xnat_emulator_session):
    emu = xnat_emulator_session
    emu.come_up()  # in case an earlier test left it down
    emu.reset()
    emu.clear_user_options()
    snap = emu.snapshot()
    yield emu
    emu.come_up()
    emu.clear_faults()
    emu.restore(snap)


@pytest.fixture
def make_xnat(tmp_path_factory):
    started: list[XnatEmulator] = []

    def make(**kw) -> XnatEmulator:
        emu = XnatEmulator(root=tmp_path_factory.mktemp("xnat-own"), **kw).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture(scope="session")
def demo_xnat(tmp_path_factory):
    emu = XnatEmulator.demo(tmp_path_factory.mktemp("xnat-demo"))
    yield emu
    emu.stop()
