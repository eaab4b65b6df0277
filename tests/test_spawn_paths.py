"""Path safety of the spawn hooks: translation, roots, hostile paths and ids, symlinks."""

from __future__ import annotations

import os

import pytest

from spawn_hooks.errors import PlanError
from spawn_hooks.paths import (
    check_project_id,
    check_servername,
    check_target,
    check_username,
    clean_absolute,
    ensure_workspace,
    place_source,
    resolve_inside,
    translate,
)

ARCHIVE = "/srv/xnat/archive"
WORKSPACES = "/srv/xnat/workspaces"


def place(path, username="alice", extra=()):
    return place_source(path, archive_root=ARCHIVE, workspace_root=WORKSPACES, username=username,
                        extra_readonly_roots=extra)


# -- translation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/data/xnat/archive/P1/arc001", "/docker/archive/P1/arc001"),
        ("/data/xnat/archive", "/docker/archive"),
        # a look-alike directory is not below the prefix (the plugin's String.replace would rewrite it)
        ("/data/xnat/archive2/P1", "/data/xnat/archive2/P1"),
        ("/elsewhere/data/xnat/archive/P1", "/elsewhere/data/xnat/archive/P1"),
    ],
)
def test_translate_replaces_whole_leading_prefix_only(path, expected):
    assert translate(path, "/data/xnat/archive", "/docker/archive") == expected


def test_translate_same_prefix_is_identity():
    assert translate("/a/b", "/a", "/a") == "/a/b"


# -- hostile paths ----------------------------------------------------------------------------

HOSTILE_PATHS = [
    None,
    42,
    ["/srv/xnat/archive/P1"],
    {"path": "/srv"},
    "",
    "relative/P1/arc001",
    "./P1",
    "/srv/xnat/archive/P1/../../../../etc",
    "/srv/xnat/archive/../archive/P1",
    "/srv/xnat/archive/P1/./arc001",
    "/srv/xnat/archive//P1",
    "/srv/xnat/archive/P1/arc001\0/x",
    "/srv/xnat/archive/P1/arc001\n/etc",
    "/srv/xnat/archive/P1/{secret}",
    "/srv/xnat/archive/P1/$(rm -rf ~)",
    "/srv/xnat/archive/P1/`id`",
    "/srv/xnat/archive/P1/a b",
    "/srv/xnat/archive/P1/a;b",
    "/srv/xnat/archive/ＰＲＯＪ",  # full-width look-alikes
    "/srv/xnat/archive/P1/" + "a" * 5000,
    "/srv/xnat/archive/" + "/".join(["d"] * 40),
    "\\srv\\xnat\\archive\\P1",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=lambda p: repr(p)[:40])
def test_hostile_paths_are_refused_with_a_message_that_does_not_echo_them(path):
    with pytest.raises(PlanError) as err:
        clean_absolute(path, "mount 1 source")
    msg = err.value.user_message
    assert msg.startswith("mount 1 source")
    if isinstance(path, str) and len(path) > 3:
        assert path not in msg


def test_clean_absolute_accepts_plain_paths_and_drops_a_trailing_slash():
    assert clean_absolute("/srv/xnat/archive/P1/arc001/", "x") == "/srv/xnat/archive/P1/arc001"
    assert clean_absolute("/srv/xnat/workspaces/users/o'brien", "x") == "/srv/xnat/workspaces/users/o'brien"


# -- roots ------------------------------------------------------------------------------------


def test_archive_sources_are_classified_with_their_project():
    p = place(f"{ARCHIVE}/P1/arc001/E1")
    assert (p.kind, p.project) == ("archive", "P1")


def test_the_users_own_workspace_is_the_only_workspace():
    assert place(f"{WORKSPACES}/users/alice").kind == "workspace"
    assert place(f"{WORKSPACES}/users/alice/notebooks").kind == "workspace"
    for other in (f"{WORKSPACES}/users/bob", f"{WORKSPACES}/users/alice2", f"{WORKSPACES}/users",
                  f"{WORKSPACES}/shared"):
        with pytest.raises(PlanError, match="workspace"):
            place(other)


@pytest.mark.parametrize(
    "path",
    [
        ARCHIVE,  # the whole archive: every project
        "/srv/xnat/archive2/P1",
        "/srv/xnat",
        "/etc",
        "/",
        "/var/run/docker.sock",
        f"{ARCHIVE}/.hidden/arc001",
        f"{ARCHIVE}/-P1/arc001",
    ],
)
def test_sources_outside_the_roots_or_naming_no_project_are_refused(path):
    with pytest.raises(PlanError) as err:
        place(path)
    assert "outside" in err.value.user_message or "invalid project" in err.value.user_message


def test_extra_readonly_roots_are_allowed_as_shared():
    assert place("/srv/shared/atlas", extra=("/srv/shared",)).kind == "shared"
    with pytest.raises(PlanError):
        place("/srv/shared", extra=("/srv/shared",))


@pytest.mark.parametrize("target", ["/etc", "/data", "/usr/lib/x", "/datax/p", "relative", "/data/../etc",
                                    "/home/jovyan/.ssh"])
def test_mount_targets_must_be_inside_allowed_directories(target):
    with pytest.raises(PlanError):
        check_target(target, ("/data", "/workspace"))


def test_mount_target_inside_allowed_directory():
    assert check_target("/data/projects/P1/experiments", ("/data", "/workspace")) == "/data/projects/P1/experiments"


# -- ids --------------------------------------------------------------------------------------

HOSTILE_IDS = [None, 7, "", "..", ".", "../P1", "P1/../../etc", "P1/x", "/P1", "P 1", "P1;rm", "P1\n",
               "$(id)", "{x}", "P1\0", "-rf", "_P1", "Ｐ1", "P" * 101, ["P1"]]


@pytest.mark.parametrize("pid", HOSTILE_IDS, ids=lambda p: repr(p)[:30])
def test_hostile_project_ids_are_refused(pid):
    with pytest.raises(PlanError, match="invalid project id"):
        check_project_id(pid)


@pytest.mark.parametrize("pid", ["P1", "TestProject", "proj_2-b", "a" * 100])
def test_real_project_ids_pass(pid):
    assert check_project_id(pid) == pid


@pytest.mark.parametrize("name", [None, "", ".", "..", "../bob", "a/b", "-x", "a b", "a\nb", "$(id)", "{u}",
                                  "x" * 300, "ä"])
def test_hostile_usernames_are_refused(name):
    with pytest.raises(PlanError, match="invalid XNAT username"):
        check_username(name)


@pytest.mark.parametrize("name", ["alice", "aaf_YAdr3eQ-x_9", "google_1234567890", "o'brien", "j.doe"])
def test_xnat_usernames_pass(name):
    assert check_username(name) == name


def test_servernames():
    assert check_servername("") == ""
    assert check_servername("20220822t201541799z") == "20220822t201541799z"
    for bad in ("../x", "a/b", ".x", "x" * 300, None):
        with pytest.raises(PlanError):
            check_servername(bad)


# -- the file system --------------------------------------------------------------------------


def test_resolve_inside_follows_symlinks_and_refuses_escapes(tmp_path):
    root = tmp_path / "archive"
    (root / "P1" / "arc001").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "P2").mkdir()
    os.symlink(outside, root / "P2" / "arc001")
    os.symlink(root / "P1" / "arc001", root / "P1" / "alias")

    assert resolve_inside(str(root / "P1" / "arc001"), str(root)) == str(root / "P1" / "arc001")
    assert resolve_inside(str(root / "P1" / "alias"), str(root)) == str(root / "P1" / "arc001")
    assert resolve_inside(str(root / "P1" / "missing"), str(root)) is None
    with pytest.raises(PlanError, match="link"):
        resolve_inside(str(root / "P2" / "arc001"), str(root))
    # a dangling link out of the root is refused too, not merely "missing"
    os.symlink(tmp_path / "nowhere", root / "P1" / "dangling")
    with pytest.raises(PlanError):
        resolve_inside(str(root / "P1" / "dangling"), str(root))


def test_ensure_workspace_creates_the_directory(tmp_path):
    path = ensure_workspace(str(tmp_path), "aaf_MixedCase", None, None)
    assert path == str(tmp_path / "users" / "aaf_MixedCase")
    assert os.path.isdir(path)
    # idempotent
    assert ensure_workspace(str(tmp_path), "aaf_MixedCase", None, None) == path


def test_ensure_workspace_refuses_a_symlinked_workspace(tmp_path):
    (tmp_path / "users").mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "users" / "mallory")
    with pytest.raises(PlanError, match="link"):
        ensure_workspace(str(tmp_path), "mallory", None, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_ensure_workspace_owns_it_to_nb_uid(tmp_path):
    path = ensure_workspace(str(tmp_path), "alice", 4321, 4322)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_ensure_workspace_refuses_a_hostile_username(tmp_path):
    with pytest.raises(PlanError):
        ensure_workspace(str(tmp_path), "../../etc", None, None)
    assert list(tmp_path.iterdir()) == []
