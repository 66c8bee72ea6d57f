"""shoal.parallel.probe: the cost model's coefficients of each exchange, the link fit, and
``shoal probe`` on two local processes, whose printed keys a config accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shoal.cli import main
from shoal.cli.probe import MAX_FIT_ERROR
from shoal.cli.registry import CATALOG
from shoal.config import loads, resolve
from shoal.cost import Exchange
from shoal.parallel.probe import SMALL_BYTES, coefficients, fit_link
from shoal.topology import ring


def test_coefficients_are_the_ring_formulas() -> None:
    n = 1000
    # A ring all-reduce over 4: 2(W-1) latencies, 2(W-1)/W of the message per link.
    assert coefficients([Exchange("all_reduce", (n,) * 4)], 4) == (6.0, 1.5 * n)
    # An all-gather: W-1 steps, each paced by the largest block.
    assert coefficients([Exchange("all_gather", (n, 3 * n, n, n))], 4) == (3.0, 9.0 * n)
    # A ring's gossip: each node's two messages share its uplink.
    assert coefficients([Exchange("p2p", (n,) * 4, ring(4))], 4) == (1.0, 2.0 * n)


def _rows(alpha: float, beta: float, burst_s: float = 0.0) -> list[dict]:
    """Exact timings of each kind at each size on a token-bucket link: a small message passes
    whole in the burst (its latencies only), a larger one is paced but ``burst_s`` faster."""
    rows = []
    for kind, a, per_byte in (("all_reduce", 6, 1.5), ("all_gather", 3, 3.0), ("p2p", 1, 2.0)):
        for nbytes in (1024, 16384, 1 << 20, 8 << 20):
            b = per_byte * nbytes
            paced = b / beta - burst_s if nbytes > SMALL_BYTES else 0.0
            rows.append({"kind": kind, "nbytes": nbytes, "a": a, "b": b,
                         "seconds": a * alpha + paced})  # fmt: skip
    return rows


def test_fit_recovers_the_link() -> None:
    fit = fit_link(_rows(2e-3, 10e6))
    assert fit["latency_s"] == pytest.approx(2e-3)
    assert fit["bandwidth_Bps"] == pytest.approx(10e6)
    # The small messages sit below the line by their (unpaced) bytes, the large ones on it.
    assert fit["median_relative_error"] < 0.05


def test_fit_rate_is_not_fooled_by_the_burst() -> None:
    # A two-point fit through (0, t_small) would read the burst as a faster link; the slope
    # between the two largest messages does not.
    fit = fit_link(_rows(2e-3, 10e6, burst_s=0.05))
    assert fit["bandwidth_Bps"] == pytest.approx(10e6)
    assert fit["latency_s"] == pytest.approx(2e-3)
    assert fit["max_relative_error"] > 0.01  # the large messages sit below the fitted line


def test_fit_needs_small_and_large_messages() -> None:
    rows = [r for r in _rows(2e-3, 10e6) if r["nbytes"] > SMALL_BYTES]
    with pytest.raises(ValueError, match="at most 16384 bytes"):
        fit_link(rows)


def test_shoal_probe_prints_a_link_a_config_accepts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "probe.json"
    args = ["probe", "--sizes", "1024,1048576,4194304", "--repeats", "1", "--json", str(out)]
    assert main(args) in (0, 1)  # 1: loopback timings too noisy to fit a rate (said why)
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert {(r["kind"], r["nbytes"]) for r in res["rows"]} == {
        (k, n) for k in ("all_reduce", "all_gather", "p2p") for n in (1024, 1048576, 4194304)
    }
    # What --device auto resolved to, in the title and the record (it held "auto" alone).
    assert res["device_option"] == "auto"
    assert (res["backend"], res["device"]) in {("gloo", "cpu"), ("nccl", "cuda")}
    if not torch.cuda.is_available():
        assert (res["backend"], res["device"]) == ("gloo", "cpu")
    over = f"{res['backend']} on {res['device']}" + (f" ({res['gpu']})" if "gpu" in res else "")
    assert text.startswith(f"Shoal's exchanges between 2 local processes, {over}, median of 1")
    if "error" in res["fit"]:
        assert res["fit"]["error"] in text
        return
    if res["fit"]["median_relative_error"] > MAX_FIT_ERROR:  # loopback under load, 1 repeat
        assert "fits these timings badly" in text and "[network]" not in text
        return
    keys = text[text.index("[network]") :]
    cfg = resolve(loads(keys), CATALOG)
    assert cfg["network.latency_ms"] == pytest.approx(res["fit"]["latency_s"] * 1e3, rel=1e-2)


@pytest.mark.parametrize(
    "bad", [["--sizes", "1024,2048"], ["--sizes", "a,b"], ["--nproc-per-node", "1"],
            ["--repeats", "0"], ["--device", "tpu"]]
)  # fmt: skip
def test_shoal_probe_usage_errors_are_one_line(capsys, bad) -> None:
    assert main(["probe", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shoal: error:"), err


def test_shoal_probe_refuses_a_gpu_index_it_would_not_honour(capsys) -> None:
    # Each process probes its own local GPU: cuda:1 (and cudaX) was accepted and ignored.
    assert main(["probe", "--device", "cuda:1"]) == 2
    assert "--device must be auto, cpu or cuda, got 'cuda:1'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sizes", "says"),
    [
        # Both 20000 bytes as float32 vectors: the fit divided by zero after the measurement.
        ("1024,20001,20002", "multiples of 4 bytes (float32 messages), got [20001, 20002]"),
        ("1024,16385,16386", "multiples of 4 bytes (float32 messages), got [16385, 16386]"),
        # Measured as 4, 20000 and 30000 bytes, recorded as given.
        ("7,20001,30003", "multiples of 4 bytes (float32 messages), got [7, 20001, 30003]"),
        ("1024,20000,20000,30000", "must be distinct, got [20000] more than once"),
        # A rate of 0.02 MB/s from sizes 8 bytes apart, and [network] keys to paste.
        ("1024,16388,16392", "the two largest (the rate) must be at least 1.5x apart, got 16388"),
    ],
)
def test_shoal_probe_refuses_sizes_it_cannot_send_before_starting(
    capsys, monkeypatch, sizes: str, says: str
) -> None:
    import shoal.runtime.spawn

    def no_spawn(*args, **kwargs):
        raise AssertionError("a process started")

    monkeypatch.setattr(shoal.runtime.spawn, "spawn_local", no_spawn)
    assert main(["probe", "--sizes", sizes, "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_shoal_probe_offers_no_keys_from_a_fit_that_misses(capsys, monkeypatch) -> None:
    """Sizes too close fitted a rate of 0.02 MB/s (|measured/fitted - 1| median 0.999), and
    the probe still printed [network] keys to paste, with exit 0."""
    import shoal.parallel.probe as probe
    import shoal.runtime.spawn

    carried = {"backend": "gloo", "device": "cpu"}
    monkeypatch.setattr(shoal.runtime.spawn, "spawn_local", lambda *a, **k: [([], carried), None])
    fit = {"latency_s": 1e-3, "bandwidth_Bps": 2e4, "median_relative_error": 0.999}
    monkeypatch.setattr(probe, "summarize", lambda rows: {"fit": fit})
    monkeypatch.setattr(probe, "report", lambda result, title: title)
    assert main(["probe", "--repeats", "1"]) == 1
    out = capsys.readouterr().out
    assert "fits these timings badly" in out and "[network]" not in out and "latency_ms" not in out
