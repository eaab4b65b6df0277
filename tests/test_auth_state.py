"""The auth_state["xnat"] schema shared by the login paths and the spawn hooks."""

import pytest

from xnat_oauth.auth_state import AuthStateError, Identity, XnatAuthState, XnatToken


def record(**kw):
    base = dict(
        url="https://xnat.example.org",
        username="aaf_YAdr3eQxZ",
        source="bearer",
        token=XnatToken("61e4f5db-33e0-4f06-86e7-a59217d65f5c", "s" * 64, 2_000_000_000.0),
        identity=Identity("aaf", "https://central.aaf.edu.au", "YAdr3eQxZ"),
    )
    base.update(kw)
    return XnatAuthState(**base)


def test_round_trip_keeps_every_field_and_case():
    r = record()
    state = r.into({"other": 1})
    assert state["other"] == 1
    assert state["xnat"]["version"] == 1
    assert state["xnat"]["token"]["expires_at"] == 2_000_000_000.0
    assert XnatAuthState.from_auth_state(state) == r


def test_secret_never_in_repr():
    r = record()
    assert "s" * 64 not in repr(r)
    assert "s" * 64 not in repr(r.token)


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        {"token_response": {"access_token": "x"}},  # an OAuth-only auth_state
        {"xnat": "nope"},
        {"xnat": {"version": 2, "url": "u", "username": "a", "source": "password", "token": None}},
        {"xnat": {"version": 1, "url": "u", "username": "a", "source": "password", "token": None}},
        {"xnat": {"version": 1, "url": "u", "username": "a", "source": "magic", "token": None}},
        {"xnat": {"version": 1, "url": "u", "username": "", "source": "none", "token": None}},
        {"xnat": {"version": 1, "url": "u", "username": "a", "source": "password",
                  "token": {"alias": "x", "secret": "y", "expires_at": "soon"}}},
        {"xnat": {"version": 1, "url": "u", "username": "a", "source": "password", "token": {"alias": "x"}}},
    ],
)
def test_unusable_records_are_refused_loudly(state):
    with pytest.raises(AuthStateError):
        XnatAuthState.from_auth_state(state)
    assert XnatAuthState.maybe_from_auth_state(state) is None


def test_no_token_only_for_source_none():
    r = record(source="none", token=None)
    assert XnatAuthState.from_auth_state(r.into(None)).token is None


def test_token_validity_window():
    tok = XnatToken("a", "b", 1000.0)
    assert tok.is_valid_for(10, now=900)
    assert not tok.is_valid_for(200, now=900)
