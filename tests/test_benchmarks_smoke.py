"""The login benchmark runs end to end with a tiny N and writes every figure it promises.

Only the shape of the report is checked, never a timing: numbers from a loaded test machine
mean nothing, and the benchmark itself (``make bench``) is where they are read.
"""

from __future__ import annotations

import json

from benchmarks import bench_login, run

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
    assert set(report["two_providers_over_one"]) == {"hub_cpu_per_login", "logins_per_s", "logins"}
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
