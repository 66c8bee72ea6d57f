"""The benchmark scripts refuse bad arguments before any work, with argparse's usage error
(exit 2): a ``--json`` naming a folder was found only when the figures were written, after
minutes of work (IsADirectoryError), a missing folder likewise (FileNotFoundError), and
counts of 0, sizes that are not numbers or another script's JSON ended in a traceback, a late
error or an empty result with exit 0."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from bench_helpers import BENCH, script

import _args


def parse_json(text: str) -> Path:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=_args.json_path)
    return ap.parse_args(["--json", text]).json


def test_json_path_refuses_a_folder_or_an_empty_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in (str(tmp_path), str(tmp_path / "new") + "/", ""):
        with pytest.raises(SystemExit) as stop:
            parse_json(text)
        assert stop.value.code == 2
        assert "argument --json:" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # a folder asked for is not made either


def test_json_path_makes_the_missing_folder(tmp_path: Path) -> None:
    path = parse_json(str(tmp_path / "a" / "b" / "out.json"))
    assert path == tmp_path / "a" / "b" / "out.json"
    assert path.parent.is_dir() and not path.exists()


def test_json_path_refuses_a_folder_it_cannot_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop:
        parse_json(str(tmp_path / "file" / "out.json"))
    assert stop.value.code == 2
    assert "cannot make the folder" in capsys.readouterr().err


JSON_SCRIPTS = sorted(p.stem for p in BENCH.glob("[!_]*.py") if '"--json"' in p.read_text())


class Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@pytest.mark.parametrize("name", JSON_SCRIPTS)
def test_every_scripts_json_is_checked_when_parsed(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stop(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        raise Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [f"{name}.py"])
    with pytest.raises(Parsed) as parsed:
        script(name).main()
    (action,) = [a for a in parsed.value.parser._actions if "--json" in a.option_strings]
    assert action.type is _args.json_path


def test_aggregate_refuses_a_folder_up_front_and_writes_into_a_new_one(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH / "aggregate.py"), "--dim", "1000", "--only", "mean"]
    proc = subprocess.run([*cmd, "--json", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "names a folder" in proc.stderr and "mean" not in proc.stdout  # nothing measured
    out = tmp_path / "new" / "aggregate.json"
    subprocess.run([*cmd, "--json", str(out)], check=True, capture_output=True, timeout=120,
                   cwd=tmp_path)  # fmt: skip
    assert out.is_file()


def _no_work(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("the run started before its arguments were checked")


SHAPED = "not a shaped_network.py --json"
DEVICE = "--device: device 'bogus': use 'auto', 'cpu', 'cuda' or 'cuda:N'"


@pytest.mark.parametrize(
    ("name", "argv", "work", "message"),
    [
        ("aggregate", ["--threads", "0"], ["rules"], "--threads: must be >= 1, got 0"),
        ("aggregate", ["--dim", "0"], ["rules"], "--dim: must be >= 1, got 0"),
        ("aggregate", ["--dim", "-5"], ["rules"], "--dim: must be >= 1, got -5"),
        ("scale", ["--clients", "0", "--rounds", "2"], ["matmul_gflops", "run_worker"],
         "--clients: clients per round must be >= 1: [0]"),
        ("scale", ["--repeats", "0"], ["matmul_gflops", "run_worker"], "--repeats: must be >= 1"),
        ("dist_balance", ["--load-rounds", "0", "--models", ","], ["load_ratios", "timed"],
         "--load-rounds: must be >= 1"),
        ("dist_balance", ["--repeats", "0", "--models", "mlp"], ["load_ratios", "timed"],
         "--repeats: must be >= 1"),
        ("transport_probe", ["--sizes", "abc"], ["measure"], "expected comma-separated integers"),
        ("cost_model_check", ["--shaped", "missing.json"], ["own_compute_seconds"],
         "missing.json: No such file or directory"),
        ("cost_model_check", ["--shaped", str(BENCH / "results" / "aggregate.json")],
         ["own_compute_seconds"], SHAPED),
        ("worker_kill", ["--nproc", "1"], ["launch"], "--nproc must be >= 2"),
        ("worker_kill", ["--rounds", "10", "--kill-round", "10"], ["launch"],
         "--kill-round must be in 1..9"),
        ("dgc_mnist5k", ["--density", "0"], ["run_one", "run_one_parallel"],
         "--density must be in (0, 1]"),
        ("compress", ["--size", "1000000"], ["transformer_shapes"], "--size must be >= 10,000,000"),
        # An unknown model, 0 rounds or 0 repeats ran nothing (or failed), exit 0.
        ("vs_flower", ["--models", "mlp,bogus"], ["compile_bytecode", "launch"],
         "--models: unknown ['bogus']; choose from mlp, cnn"),
        ("vs_flower", ["--rounds", "0"], ["compile_bytecode", "launch"], "--rounds: must be >= 1"),
        ("vs_flower", ["--repeats", "0"], ["compile_bytecode", "launch"],
         "--repeats: must be >= 1"),
        ("vs_flower", ["--models", "none"], ["compile_bytecode", "launch"],
         "--models none compares nothing without --scale1000"),
        # A missing data folder: job 1 failed, then a TypeError; or a FileNotFoundError.
        ("worker_kill", ["--data-dir", "missing"], ["launch"],
         "no mnist5k in missing; pass --data-dir"),
        ("dist_balance", ["--data-dir", "missing", "--models", "mlp"], ["load_ratios", "timed"],
         "no mnist5k in missing; pass --data-dir"),
        # dgc() refused these only after the dense run (~3 min).
        ("dgc_mnist5k", ["--momentum", "1.5"], ["run_one", "run_one_parallel"],
         "--momentum: must be in [0, 1), got 1.5"),
        ("dgc_mnist5k", ["--momentum", "1"], ["run_one", "run_one_parallel"],
         "--momentum: must be in [0, 1), got 1.0"),
        ("dgc_mnist5k", ["--lr", "-1"], ["run_one", "run_one_parallel"],
         "--lr: must be > 0, got -1.0"),
        ("dgc_mnist5k", ["--warmup-epochs", "-1"], ["run_one", "run_one_parallel"],
         "--warmup-epochs: must be >= 0, got -1"),
        # set_num_threads' RuntimeError; a target of 2 (it is a fraction) ran the whole grid.
        ("accuracy_vs_bytes", ["--threads", "0"], ["run_all"], "--threads: must be >= 1, got 0"),
        ("accuracy_vs_bytes", ["--target-acc", "2"], ["run_all"],
         "--target-acc: must be in (0, 1], got 2.0"),
        ("accuracy_vs_bytes", ["--target-acc", "0"], ["run_all"],
         "--target-acc: must be in (0, 1], got 0.0"),
        ("scale", ["--threads", "-1"], ["matmul_gflops", "run_worker"],
         "--threads: must be >= 0, got -1"),
        # One device check for both scripts (compress.py's was a torch traceback).
        ("scale", ["--device", "bogus"], ["matmul_gflops", "run_worker"], DEVICE),
        ("compress", ["--device", "bogus"], ["transformer_shapes"], DEVICE),
        ("robustness", ["--render", "missing.json"], [], "missing.json: No such file or directory"),
        ("robustness", ["--render", str(BENCH / "results" / "aggregate.json")], [],
         "not a robustness.py --json"),
        # Fewer steps than local SGD's period: it never averaged, a nonsense row.
        ("cost_model_check",
         ["--shaped", str(BENCH / "results" / "shaped_network_all.json"), "--steps", "4"],
         ["own_compute_seconds"], "--steps must be >= 8, local_sgd's averaging period"),
    ],
)  # fmt: skip
def test_bad_arguments_are_a_usage_error_before_any_work(
    name: str,
    argv: list[str],
    work: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    module = script(name)
    for fn in work:
        monkeypatch.setattr(module, fn, _no_work)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_compress_takes_a_size_above_powersgds_inputs() -> None:
    """Both PowerSGD rows read the first entries they need: 12M failed as 1M did."""
    compress = script("compress")
    shapes = (torch.Size([10, 20]),)
    lengths = {key: n for key, _, _, n in compress.cases(12_000_000, shapes)}
    assert lengths["powersgd_2500x4000"] == 10_000_000 and lengths["powersgd"] == 200
    assert lengths["identity"] == 12_000_000
