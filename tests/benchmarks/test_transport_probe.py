"""benchmarks/transport_probe.py: the cost model's coefficients of each exchange, the link fit,
and a loopback run (no namespaces, no root). cost_model_check.py reads the probe's links."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cost import Exchange
from shoal.topology import ring

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import transport_probe as probe  # noqa: E402


def test_coefficients_are_the_ring_formulas() -> None:
    n = 1000
    # A ring all-reduce over 4: 2(W-1) latencies, 2(W-1)/W of the message per link.
    assert probe.coefficients([Exchange("all_reduce", (n,) * 4)], 4) == (6.0, 1.5 * n)
    # An all-gather: W-1 steps, each paced by the largest block.
    assert probe.coefficients([Exchange("all_gather", (n, 3 * n, n, n))], 4) == (3.0, 9.0 * n)
    # A ring's gossip: each node's two messages share its uplink.
    assert probe.coefficients([Exchange("p2p", (n,) * 4, ring(4))], 4) == (1.0, 2.0 * n)


def _rows(alpha: float, beta: float, burst_s: float = 0.0) -> list[dict]:
    """Exact timings of each kind at each size on a token-bucket link: a small message passes
    whole in the burst (its latencies only), a larger one is paced but ``burst_s`` faster."""
    rows = []
    for kind, a, per_byte in (("all_reduce", 6, 1.5), ("all_gather", 3, 3.0), ("p2p", 1, 2.0)):
        for nbytes in (1024, 16384, 1 << 20, 8 << 20):
            b = per_byte * nbytes
            paced = b / beta - burst_s if nbytes > probe.SMALL_BYTES else 0.0
            rows.append({"kind": kind, "nbytes": nbytes, "a": a, "b": b,
                         "seconds": a * alpha + paced})  # fmt: skip
    return rows


def test_fit_recovers_the_link() -> None:
    fit = probe.fit_link(_rows(2e-3, 10e6))
    assert fit["latency_s"] == pytest.approx(2e-3)
    assert fit["bandwidth_Bps"] == pytest.approx(10e6)
    # The small messages sit below the line by their (unpaced) bytes, the large ones on it.
    assert fit["median_relative_error"] < 0.05


def test_fit_rate_is_not_fooled_by_the_burst() -> None:
    # A two-point fit through (0, t_small) would read the burst as a faster link; the slope
    # between the two largest messages does not.
    fit = probe.fit_link(_rows(2e-3, 10e6, burst_s=0.05))
    assert fit["bandwidth_Bps"] == pytest.approx(10e6)
    assert fit["latency_s"] == pytest.approx(2e-3)
    assert fit["max_relative_error"] > 0.01  # the large messages sit below the fitted line


def test_fit_needs_small_and_large_messages() -> None:
    rows = [r for r in _rows(2e-3, 10e6) if r["nbytes"] > probe.SMALL_BYTES]
    with pytest.raises(ValueError, match="at most 16384 bytes"):
        probe.fit_link(rows)


def test_loopback_run_writes_the_headline_and_cost_model_check_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "transport_probe.py"), "--no-netns",
        "--rates", "none", "--sizes", "1024,1048576,4194304", "--repeats", "1", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=180, cwd=tmp_path)
    res = json.loads(out.read_text())
    assert set(res["headline"]) == {"latency_ms_none", "rate_fraction_none"}
    assert res["headline"]["latency_ms_none"] > 0 and res["headline"]["rate_fraction_none"] is None
    rows = res["rates"]["none"]["rows"]
    assert {(r["kind"], r["nbytes"]) for r in rows} == {
        (k, n) for k in probe.KINDS for n in (1024, 1048576, 4194304)
    }
    # Uncapped links are not a shaped run's: cost_model_check.py refuses them by name.
    import cost_model_check

    with pytest.raises(SystemExit, match="no rate of"):
        cost_model_check.probed_links(out)
    res["rates"]["100mbit"] = res["rates"].pop("none")
    out.write_text(json.dumps(res))
    (link,) = cost_model_check.probed_links(out).values()
    assert link.latency_s == res["rates"]["100mbit"]["fit"]["latency_s"]
