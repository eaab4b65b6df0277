"""The login and workshop benchmarks run end to end with a tiny N and write every figure they promise.

Only the shape of the report is checked, never a timing: numbers from a loaded test machine
mean nothing, and the benchmark itself (``make bench``) is where they are read.
"""

from __future__ import annotations

import json

from benchmarks import bench_login, bench_workshop, run

VARIANT_FIELDS = {
    "logins",
    "failed",
    "wall_s",
    "logins_per_s",
    "latency_ms",
    "hub_requests_first_login",
    "idp_calls_per_login",
    "hub_requests_per_login",
    "xnat_calls_per_login",
    "cpu_ms_per_login",
}


def test_bench_login_with_three_logins_per_side_writes_the_report(tmp_path, capsys):
    out = tmp_path / "login.json"
    assert bench_login.main(["--logins", "3", "--concurrency", "2", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert set(report["variants"]) == set(bench_login.VARIANTS)
    for name, figures in report["variants"].items():
        assert VARIANT_FIELDS <= set(figures), name
        assert figures["logins"] == 3 and figures["failed"] == 0, name
        assert set(figures["latency_ms"]) == {"p50", "p95", "mean", "max"}
        assert set(figures["idp_calls_per_login"]) == {"discovery", "jwks", "token", "userinfo"}
        assert {"hub", "proxy", "idp", "xnat", "client"} <= set(figures["cpu_ms_per_login"])
    for key in ("ratio_xnat_over_generic", "ratio_over_generic", "ratio_over_generic_median_of_rounds",
                "hub_cpu_ratio_generic_over", "targets"):
        assert key in report, key
    assert {"cpu_count", "python", "load_average_at_start"} <= set(report["machine"])
    assert set(report["targets"]) == {
        "ratio_at_least_0_85",
        "no_discovery_or_jwks_fetch_after_first_login",
        "one_xnat_call_per_login_without_permission_check",
        "two_provider_hub_cpu_per_login_within_5pct",
    }
    assert set(report["two_providers_over_one"]) == {
        "hub_cpu_per_login", "logins_per_s", "logins", "baseline", "against_aaf_only"
    }
    assert report["variants"]["xnat_google"]["xnat_calls_per_login"]["total"] == 1.0
    # the two-provider hub's first logins fetch each provider's discovery and keys once
    cold_two = report["variants"]["xnat_two_providers"]["hub_requests_first_login"]
    assert cold_two["discovery"] == 1 and cold_two["jwks"] == 1, cold_two
    # counts, not timings: these are facts of the protocol, the same on any machine
    cold = report["variants"]["xnat"]["hub_requests_first_login"]
    assert cold["discovery"] == 1 and cold["jwks"] == 1, cold
    assert report["targets"]["no_discovery_or_jwks_fetch_after_first_login"]
    assert report["variants"]["xnat"]["xnat_calls_per_login"]["total"] == 1.0
    assert report["variants"]["generic"]["xnat_calls_per_login"]["total"] == 0.0
    assert "xnat/generic" in capsys.readouterr().out


def test_the_runner_finds_every_benchmark():
    assert "login" in run.discover()


def test_bench_workshop_with_four_users_logs_in_and_starts_every_server(tmp_path, capsys):
    """Two hubs (plain GenericOAuthenticator, ours), four users each: every login and spawn succeeds,
    every figure is there, and the counts the protocol fixes are what they must be."""
    out = tmp_path / "workshop.json"
    assert bench_workshop.main(["--users", "4", "--concurrency", "2", "--spawn-concurrency", "2", "--rounds", "2",
                                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert report["errors"] == 0
    assert set(report["variants"]) == set(bench_workshop.VARIANTS)
    generic, ours = report["variants"]["generic"], report["variants"]["xnat"]
    assert set(generic["phases"]) == {"login_openid", "spawn"}
    assert set(ours["phases"]) == {"login_openid", "login_password", "spawn"}
    for variant in (generic, ours):
        assert variant["failed"] == 0 and variant["servers_running"] == 4 + 2 * bench_workshop.WARMUP_USERS
        for phase in variant["phases"].values():
            assert phase["failed"] == 0
            assert {"hub", "proxy", "idp", "xnat", "client"} <= set(phase["cpu_ms_per_item"])
            assert {"p50_ms", "p99_ms"} <= set(phase["latency"])
        assert {"p50_ms", "p99_ms", "n"} <= set(variant["api_latency_during_burst"])
    assert set(report["ratios_xnat_over_generic"]) == {
        "hub_cpu_per_login", "hub_cpu_per_openid_login", "hub_cpu_per_password_login", "hub_cpu_per_spawn",
        "hub_cpu_per_login_raw", "hub_cpu_per_spawn_raw", "api_p50_during_burst", "api_p99_during_burst",
    }
    for variant in (generic, ours):
        # the benchmark's own API requests (probes, progress streams) are counted and costed
        assert variant["hub_cpu_ms_per_harness_request"] > 0
        assert variant["phases"]["spawn"]["harness_requests"] >= variant["phases"]["spawn"]["count"]
    # facts of the protocol, the same on any machine: the plain hub never calls XNAT; ours asks
    # XNAT for a token and the Jupyter role per login, and per spawn validates the token at the
    # refresh, then lists and checks two projects (started from the hub) or reads XNAT's launch
    # options with the service account (launched from XNAT: half the spawns); a server started
    # from the hub gets a token of its own, minted for it
    assert generic["phases"]["spawn"]["xnat_calls_per_item"]["total"] == 0
    assert ours["phases"]["login_password"]["xnat_calls_per_item"] == {"total": 2.0, "tokens.issue": 1.0,
                                                                      "users.roles": 1.0}
    assert report["xnat_per_spawn"] == {"total": 3.5, "project_subjects": 1.0, "projects": 0.5,
                                        "tokens.issue": 0.5, "user_options": 0.5, "users.username": 1.0}
    assert report["service_account_sessions_whole_run"]["opened"] == 1
    # the hub's own /hub/metrics saw every login and spawn the benchmark made (warm-up included)
    seen = ours["hub_metrics"]
    total = 4 + 2 * bench_workshop.WARMUP_USERS
    assert sum(seen["logins"].values()) == seen["logins"]["openid/success"] + seen["logins"]["password/success"] == total
    assert seen["spawns"] == {"hub/success": total // 2, "xnat/success": total // 2}
    assert "xnat/generic" in capsys.readouterr().out


def test_the_runner_finds_the_workshop_benchmark():
    assert "workshop" in run.discover()
