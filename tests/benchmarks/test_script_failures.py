"""What the benchmark scripts do when a run goes wrong, and what they say they compared:
``vs_flower.py`` reported a worker that stopped on an error as a timeout and exited 0;
``worker_kill.py`` went on after a failed job and ended in a TypeError; ``dgc_mnist5k.py``
took more workers than training images; ``lgreco_cnn.py`` and ``dgc_mnist5k.py`` printed
their figures but not what they compared, on what data."""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bench_helpers import dgc_result, script


def _vs_flower(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, returncode: int | None, output: str
) -> None:
    """``vs_flower.py --skip-flower --quick --models mlp`` with every worker replaced by one
    that ends with ``returncode`` (None: killed at the timeout) after printing ``output``."""
    vs = script("vs_flower")

    def run(cmd: list[str], *, log: Path, **kwargs: Any) -> Any:  # as _measure.run
        log.write_text(output)
        return vs._measure.Measured(returncode, 0.5, 10.0, 0.0, 0.0, 1)

    monkeypatch.setattr(vs, "compile_bytecode", lambda: None)
    monkeypatch.setattr(vs._measure, "run", run)
    argv = ["--skip-flower", "--quick", "--models", "mlp", "--data-dir", str(mnist_dir)]
    out = mnist_dir.parent / "vs.json"
    monkeypatch.setattr(sys, "argv", ["vs_flower.py", *argv, "--json", str(out)])
    vs.main()


def test_vs_flower_reports_a_failed_worker_as_failed_and_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = "Traceback (most recent call last):\n  ...\nValueError: boom\n\n"
    with pytest.raises(SystemExit) as stop:
        _vs_flower(monkeypatch, mnist_dir, 1, log)
    assert stop.value.code not in (0, None)
    assert "1 run(s) failed" in str(stop.value.code)
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("shoal   mlp")]
    assert "failed" in row and "timeout" not in row
    assert "shoal/mlp failed (rc=1): ValueError: boom" in out
    assert not (mnist_dir.parent / "vs.json").exists()  # no figures from a failed run


def test_vs_flower_still_reports_a_timeout_as_one(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _vs_flower(monkeypatch, mnist_dir, None, "")
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shoal ")]
    assert "timeout" in row and "failed" not in row
    assert (mnist_dir.parent / "vs.json").is_file()


def _worker_kill(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, jobs: list[dict[str, Any]]
) -> tuple[list[str], str]:
    """``worker_kill.py`` with its jobs replaced by ``jobs``, which must stop it; returns the
    jobs launched and the message it stopped with."""
    wk = script("worker_kill")
    launched: list[str] = []

    def launch(cfg: Path, out: Path, nproc: int, **kwargs: Any) -> dict[str, Any]:
        launched.append(out.name)
        return dict(jobs[len(launched) - 1])

    monkeypatch.setattr(wk, "launch", launch)
    monkeypatch.setattr(wk, "same_run", lambda *args: {"max_abs_param_difference": 0.0,
                                                       "metrics_equal": True})  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["worker_kill.py", "--data-dir", str(mnist_dir)])
    with pytest.raises(SystemExit) as stop:
        wk.main()
    assert isinstance(stop.value.code, str)  # one line, exit status 1
    return launched, stop.value.code


def _job(returncode: int, rows: int, error: str = "") -> dict[str, Any]:
    return {
        "error": error,
        "returncode": returncode,
        "wall_seconds": 1.0,
        "rounds_done": rows,
        "seconds_after_last_metrics_write": 0.5 if rows else None,
        "last_stderr_line": error,
        "rows": [{"round": r} for r in range(rows)],
    }


def test_worker_kill_stops_at_the_first_failed_job(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path
) -> None:
    jobs = [_job(2, 0, "shoal: error: no data")] * 3
    launched, message = _worker_kill(monkeypatch, mnist_dir, jobs)
    assert launched == ["clean"]  # not two more jobs on the same failure
    assert message == "job 1 (uninterrupted) failed (rc 2): shoal: error: no data"


def test_worker_kill_stops_when_the_killed_job_wrote_no_metrics(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path
) -> None:
    jobs = [_job(0, 40), _job(0, 40), _job(1, 0, "shoal: error: no data")]
    launched, message = _worker_kill(monkeypatch, mnist_dir, jobs)
    assert launched == ["clean", "restarted", "failed"]
    assert message.startswith("job 3 (killed, no restarts) wrote no metrics")


def test_dgc_refuses_more_workers_than_training_images_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dgc = script("dgc_mnist5k")
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 4000, 28, 28))  # an IDX header: 4,000 images
    assert dgc.training_images(str(tmp_path)) == 4000

    def no_work(*args: Any) -> None:
        raise AssertionError("trained before its arguments were checked")

    monkeypatch.setattr(dgc, "run_one", no_work)
    argv = ["--workers", "5000", "--data-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["dgc_mnist5k.py", *argv])
    with pytest.raises(SystemExit) as stop:
        dgc.main()
    assert stop.value.code == 2
    assert "--workers must be <= 4000" in capsys.readouterr().err


def test_lgreco_prints_what_it_compares_before_the_work(
    monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lgreco = script("lgreco_cnn")

    class Started(Exception):
        pass

    def gradient(a: argparse.Namespace) -> None:
        raise Started

    monkeypatch.setattr(lgreco, "gradient", gradient)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sys, "argv", ["lgreco_cnn.py", "--data-dir", str(mnist_dir)])
    with pytest.raises(Started):
        lgreco.main()
    out = capsys.readouterr().out
    assert "mnist5k (" in out and "cnn(padding='valid')" in out and "100 SGD steps" in out


def test_dgc_prints_what_it_compared(
    monkeypatch: pytest.MonkeyPatch,
    mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dgc = script("dgc_mnist5k")

    def run(a: argparse.Namespace, dense: bool) -> dict[str, Any]:
        return dgc_result(dense, 10)

    monkeypatch.setattr(dgc, "run_one", run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    argv = ["--rounds", "10", "--data-dir", str(mnist_dir)]
    monkeypatch.setattr(sys, "argv", ["dgc_mnist5k.py", *argv])
    dgc.main()
    out = capsys.readouterr().out
    assert "4,000 training images IID over 8 workers" in out and "10 rounds" in out
