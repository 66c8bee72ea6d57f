"""What the benchmark scripts write and report when a run is not the full one:
``accuracy_vs_bytes.py --quick`` drew over the committed ``docs/img/accuracy_vs_bytes.png``,
``robust_gossip.py --steps 20`` over ``benchmarks/results/robust_gossip.md`` and
``robustness.py --rounds 3`` over its published table and heat map; ``dgc_mnist5k.py`` with
fewer rounds than DGC's warm-up crashed (``--form parallel``, IndexError) or printed a ratio
"after the warm-up" from a round inside it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from bench_helpers import dgc_result, script


def test_accuracy_vs_bytes_draws_the_committed_figure_only_from_a_full_run_of_w(
    tmp_path: Path,
) -> None:
    avb = script("accuracy_vs_bytes")
    every = [c[0] for c in avb.CONFIGS]
    default = [k for k in every if k not in avb.EXTRA]

    def png(rounds: int, keys: list[str], **given: Any) -> Path | None:
        a = argparse.Namespace(**{"png": None, "json": None, **given})
        return avb.png_path(a, rounds, keys)

    assert png(20, default) == png(20, every) == avb.DEFAULT_PNG
    assert png(20, avb.QUICK) is None
    assert png(20, avb.QUICK, json=tmp_path / "q.json") == tmp_path / "q.png"
    assert png(5, every, json=tmp_path / "q.json") == tmp_path / "q.png"
    assert png(20, default, png="") is None
    assert png(5, avb.QUICK, png="mine.png") == Path("mine.png")


def test_accuracy_vs_bytes_quick_leaves_the_committed_figure(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, tmp_path: Path
) -> None:
    avb = script("accuracy_vs_bytes")
    drawn: list[Path] = []
    monkeypatch.setattr(avb, "run_all", lambda chosen, rounds, a: {})
    monkeypatch.setattr(avb, "table", lambda results, target: "")
    monkeypatch.setattr(avb, "plot", lambda results, rounds, png, long: drawn.append(png))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    out = tmp_path / "quick.json"
    argv = ["--quick", "--data-dir", str(mnist_dir), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["accuracy_vs_bytes.py", *argv])
    avb.main()
    assert drawn == [tmp_path / "quick.png"] and out.is_file()


def _gossip_main(monkeypatch: pytest.MonkeyPatch, md: Path, *argv: str) -> None:
    gossip = script("robust_gossip")
    monkeypatch.setattr(gossip, "DEFAULT_MD", md)
    monkeypatch.setattr(gossip, "grid", lambda args: {"results": {}})
    monkeypatch.setattr(gossip, "markdown", lambda report: "table")
    monkeypatch.setattr(sys, "argv", ["robust_gossip.py", *argv])
    gossip.main()


def test_robust_gossip_writes_the_committed_table_only_from_the_full_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    md = tmp_path / "robust_gossip.md"
    _gossip_main(monkeypatch, md, "--steps", "20")
    _gossip_main(monkeypatch, md, "--quick")
    assert not md.exists()
    _gossip_main(monkeypatch, md)
    assert md.read_text() == "table"


@pytest.mark.parametrize(
    ("argv", "published"), [(["--rounds", "3"], False), (["--rounds", "25"], True), ([], True)]
)
def test_robustness_writes_the_published_files_only_from_a_full_run(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], published: bool
) -> None:
    import shoal.robustness as robustness

    asked: dict[str, Any] = {}
    workload = SimpleNamespace(description="never trained: run_grid is replaced")
    monkeypatch.setattr(robustness, "load_workload", lambda data, folder: workload)
    monkeypatch.setattr(robustness, "run_grid", lambda *args, **kwargs: {"headline": {}})
    monkeypatch.setattr(robustness.render, "markdown", lambda report: "")
    monkeypatch.setattr(robustness.render, "write", lambda report, **paths: asked.update(paths))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "argv", ["robustness.py", *argv])
    script("robustness").main()
    assert (asked["md_path"] is not None) is published
    assert (asked["png_path"] is not None) is published


def test_dgc_after_warmup_figures_wait_for_the_end_of_the_warmup() -> None:
    dgc = script("dgc_mnist5k")
    rows = [{"step": s, "bytes_sent": 1000 * s} for s in (25, 50)]  # evaluations
    assert dgc.per_step_after_warmup(rows, 64) is None  # --rounds 50: an IndexError
    rows.append({"step": 75, "bytes_sent": 76_000})
    assert dgc.per_step_after_warmup(rows, 64) is None  # one evaluation after: no span
    rows.append({"step": 100, "bytes_sent": 77_000})
    assert dgc.per_step_after_warmup(rows, 64) == 1000 / 25
    assert dgc.per_step_after_warmup(rows, 0) == 77_000 / 100  # dense: from the first step
    rounds = [{"uplink_bytes": 9000}] * 64
    assert dgc.last_round_after_warmup(rounds, 64) is None  # the last warm-up round's
    assert dgc.last_round_after_warmup([*rounds, {"uplink_bytes": 50}], 64) == 50


@pytest.mark.parametrize("form", ["federated", "parallel"])
def test_dgc_run_inside_the_warmup_reports_no_ratio_after_it(
    form: str,
    monkeypatch: pytest.MonkeyPatch,
    mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dgc = script("dgc_mnist5k")

    def run(a: argparse.Namespace, dense: bool) -> dict[str, Any]:
        return dgc_result(dense, None)

    monkeypatch.setattr(dgc, "run_one", run)
    monkeypatch.setattr(dgc, "run_one_parallel", run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    out = tmp_path / "dgc.json"
    argv = ["--form", form, "--rounds", "10", "--data-dir", str(mnist_dir), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["dgc_mnist5k.py", *argv])
    dgc.main()
    assert "per round after the warm-up n/a" in capsys.readouterr().out
    assert json.loads(out.read_text())["byte_reduction_per_round_after_warmup"] is None
