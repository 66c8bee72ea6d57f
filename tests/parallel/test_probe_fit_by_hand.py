"""shoal.parallel.probe and ``shoal probe`` against fits, tables and keys worked out by hand:
the latency is the median of ``seconds / a`` over the messages of at most SMALL_BYTES, the
rate the median over the kinds of the slope between each kind's two largest messages (a
middle-sized message that passed in a token bucket's burst must not bend it), rates are bytes
per second and the printed keys megabits per second."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shoal.cli import UsageError, main
from shoal.cli.probe import _sizes
from shoal.cli.registry import CATALOG
from shoal.config import loads, resolve
from shoal.parallel.probe import SMALL_BYTES, fit_link, network_keys, probe, report, summarize
from shoal.runtime.spawn import spawn_local

TRUE_ALPHA = 1e-3
# kind -> (a, b per message byte, seconds per unit of b): three different slopes, so their
# median (all_gather's), their maximum and a slope per message byte all differ.
KINDS = {"all_reduce": (6.0, 1.5, 1e-7), "all_gather": (3.0, 3.0, 2e-7), "p2p": (1.0, 2.0, 4e-7)}
# seconds / a of the small messages: 1 ms at 1 KB; 2, 2 and 9 ms at 16 KB. Median 1.5 ms;
# the mean (2.67 ms) and the median of the 1 KB messages alone (1 ms) differ from it.
SMALL_RATIO = {1024: (1e-3, 1e-3, 1e-3), SMALL_BYTES: (2e-3, 2e-3, 9e-3)}
LARGE = (1 << 20, 4 << 20, 8 << 20)


def _rows() -> list[dict[str, Any]]:
    """Two small messages per kind, and three large ones: the two largest on the line
    ``a * alpha + b * slope``, the 1 MB one at half of it (it passed mostly in the burst)."""
    rows = []
    for i, (kind, (a, per_byte, slope)) in enumerate(KINDS.items()):
        for nbytes, ratios in SMALL_RATIO.items():
            rows.append({"kind": kind, "nbytes": nbytes, "a": a, "b": per_byte * nbytes,
                         "seconds": ratios[i] * a})  # fmt: skip
        for nbytes in LARGE:
            b = per_byte * nbytes
            seconds = a * TRUE_ALPHA + b * slope
            rows.append({"kind": kind, "nbytes": nbytes, "a": a, "b": b,
                         "seconds": seconds / 2 if nbytes == LARGE[0] else seconds})  # fmt: skip
    return rows


def test_fit_is_the_two_medians_by_hand() -> None:
    rows = _rows()
    fit = fit_link(rows)
    assert fit["latency_s"] == pytest.approx(1.5e-3)
    assert fit["bandwidth_Bps"] == pytest.approx(1 / 2e-7)  # all_gather's slope, the median
    # The relative errors, re-derived with numpy from the fitted line.
    a, b, s = (np.array([r[k] for r in rows]) for k in ("a", "b", "seconds"))
    errors = np.abs(s / (a * 1.5e-3 + b * 2e-7) - 1)
    assert fit["median_relative_error"] == pytest.approx(float(np.median(errors)))
    assert fit["max_relative_error"] == pytest.approx(float(errors.max()))
    assert fit["max_relative_error"] > fit["median_relative_error"]


def test_a_message_of_small_bytes_is_not_one_of_the_large_ones() -> None:
    """16384 bytes sets the latency; it does not count towards the two larger messages."""
    rows = [r for r in _rows() if r["nbytes"] <= LARGE[0]]  # 1 KB, 16 KB and 1 MB
    with pytest.raises(ValueError, match="two larger ones of each kind"):
        fit_link(rows)


def test_no_rate_when_the_largest_messages_take_no_longer() -> None:
    rows = _rows()
    for r in rows:
        if r["nbytes"] == LARGE[-1]:
            r["seconds"] = next(
                q["seconds"] for q in rows if q["kind"] == r["kind"] and q["nbytes"] == LARGE[1]
            )
    with pytest.raises(ValueError, match="no rate to fit"):
        fit_link(rows)
    assert summarize(rows)["fit"] == {
        "error": "the largest messages took no longer than smaller ones: no rate to fit"
    }


def test_summary_fits_each_kind_on_its_own_rows_and_divides_by_the_nominal_rate() -> None:
    result = summarize(_rows(), nominal_Bps=1e7)
    assert result["fit"]["rate_fraction"] == pytest.approx(0.5)  # 5 MB/s of 10
    for kind, (_, _, slope) in KINDS.items():
        f = result["fit_per_kind"][kind]
        assert f["bandwidth_Bps"] == pytest.approx(1 / slope), kind
        assert f["rate_fraction"] == pytest.approx(1 / slope / 1e7), kind
    assert summarize(_rows())["fit"]["rate_fraction"] is None


def test_report_puts_each_time_under_its_kind_and_size() -> None:
    rows = _rows()
    text = report(summarize(rows), "T")
    lines = text.splitlines()
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header == ["bytes", "all_reduce", "all_gather", "p2p"]
    table = [line for line in lines[3:] if line.startswith("|")]
    sizes = sorted({r["nbytes"] for r in rows})
    assert len(table) == len(sizes)
    for line, nbytes in zip(table, sizes, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == nbytes
        for kind, cell in zip(header[1:], cells[1:], strict=True):
            (row,) = [r for r in rows if r["kind"] == kind and r["nbytes"] == nbytes]
            assert float(cell) == pytest.approx(row["seconds"], abs=5e-6)
    overall = next(line for line in lines if line.startswith("  fit, all kinds"))
    assert "alpha   1.500 ms" in overall and "beta     5.00 MB/s" in overall


def test_network_keys_are_milliseconds_and_megabits_both_ways() -> None:
    keys = network_keys({"latency_s": 2.5e-3, "bandwidth_Bps": 12.5e6})  # 100 Mbit/s
    cfg = resolve(loads(keys), CATALOG)
    assert cfg["network.latency_ms"] == pytest.approx(2.5)
    assert cfg["network.uplink_mbit_s"] == pytest.approx(100.0)
    assert cfg["network.downlink_mbit_s"] == pytest.approx(100.0)


def test_probe_refuses_bad_repeats_and_a_single_process() -> None:
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        probe(SimpleNamespace(world_size=2), [1024], repeats=0)
    with pytest.raises(ValueError, match="at least 2 processes"):
        probe(SimpleNamespace(world_size=1), [1024], repeats=1)


def _probe_two(sizes: list[int], repeats: int) -> list[dict]:
    from shoal.parallel import DistComm
    from shoal.runtime.procgroup import init_from_env

    return probe(DistComm(init_from_env(device="cpu")), sizes, repeats)


def test_probe_rows_on_two_processes_record_what_was_timed() -> None:
    """No timing is checked: the rows' bookkeeping. ``repeats`` timed calls (the warm-up
    call is not one of them), ``seconds`` their median, the bytes actually sent (whole
    float32s) and the coefficients of one call, not of all of them: a ring all-reduce over 2
    is 2 latencies and the message once (2 (W - 1) and 2 (W - 1) / W)."""
    rows, again = spawn_local(_probe_two, 2, [1030, 40000], 3, timeout_s=120)
    assert len(rows) == 2 * 3 and len(again) == len(rows)  # both ranks return every row
    assert {(r["kind"], r["nbytes"]) for r in rows} == {
        (k, n) for k in ("all_reduce", "all_gather", "p2p") for n in (1028, 40000)
    }
    for r in rows:
        assert len(r["all_seconds"]) == 3
        assert r["seconds"] == statistics.median(r["all_seconds"])
        if r["kind"] == "all_reduce":
            assert r["a"] == 2.0
            assert r["nbytes"] <= r["b"] < r["nbytes"] + 64  # the message once, with framing


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("4194304,1024,1048576", [1024, 1048576, 4194304]),
        ("16384,1048576,2000000", [16384, 1048576, 2000000]),
        ("4,16388,65536", [4, 16388, 65536]),
    ],
)
def test_sizes_are_sorted_and_small_bytes_is_small(text: str, sizes: list[int]) -> None:
    assert _sizes(text) == sizes


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # Deduplicated silently before; refused now, like any size the probe would not send.
        ("16384,1048576,1048576,2000000", "must be distinct, got [1048576] more than once"),
        # Sent as size // 4 float32 values: 16388 and 16389 bytes were both 16388.
        ("4,16388,16389", "must be multiples of 4 bytes (float32 messages), got [16389]"),
    ],
)
def test_sizes_the_probe_would_not_send_as_given_are_refused(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        _sizes(text)


@pytest.mark.parametrize("text", ["2,1048576,4194304", "1024,1048576", "16385,1048576,4194304"])
def test_sizes_need_a_small_size_of_4_bytes_or_more_and_two_large(text: str) -> None:
    with pytest.raises(UsageError, match="--sizes needs one size of 4 to 16384 bytes"):
        _sizes(text)


def _fake_spawn(rows: list[dict]) -> Any:
    def spawn(fn: Any, world: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(rows, {"backend": "gloo", "device": "cpu"})] + [None] * (world - 1)

    return spawn


def test_shoal_probe_prints_the_overall_fit_and_exits_1_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command with the processes replaced by known rows: its keys are the fit over
    every kind (1.5 ms, 5 MB/s = 40 Mbit/s), its JSON holds them, and rows that fit no rate
    make it exit 1."""
    import shoal.runtime.spawn

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(shoal.runtime.spawn, "spawn_local", _fake_spawn(_rows()))
    out = tmp_path / "p.json"
    args = ["probe", "--sizes", "1024,16384,1048576,4194304,8388608", "--repeats", "1"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    cfg = resolve(loads(text[text.index("[network]") :]), CATALOG)
    assert cfg["network.latency_ms"] == pytest.approx(1.5)
    assert cfg["network.uplink_mbit_s"] == pytest.approx(40.0)
    assert cfg["network.downlink_mbit_s"] == pytest.approx(40.0)
    record = json.loads(out.read_text())
    assert record["fit"]["bandwidth_Bps"] == pytest.approx(5e6)
    assert record["sizes"] == [1024, 16384, 1048576, 4194304, 8388608]
    assert (record["backend"], record["device"], record["device_option"]) == ("gloo", "cpu", "auto")
    assert text.startswith("Shoal's exchanges between 2 local processes, gloo on cpu, median of 1")
    flat = [dict(r, seconds=1.0) for r in _rows()]
    monkeypatch.setattr(shoal.runtime.spawn, "spawn_local", _fake_spawn(flat))
    assert main(args) == 1
    assert "no rate to fit" in capsys.readouterr().out
