"""Data-parallel and decentralized methods from a config: `shoal run` simulates the workers,
`shoal launch` runs one per process, with the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import shoal

DP = """
seed = 1
num_threads = 1
[data]
name = "digits"
[partition]
scheme = "iid"
num_clients = 2
[model]
name = "mlp"
hidden = [32]
[algorithm]
name = "{name}"
lr = 0.3
[parallel]
steps = 30
eval_every = 10
batch_size = 16
"""


def _config(folder: Path, name: str, extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(DP.format(name=name) + extra)
    return path


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["sync_sgd", "local_sgd", "dpsgd", "sgp", "easgd", "dgc"])
def test_simulated_parallel_run_learns_and_writes_its_files(tmp_path, name):
    cfg = _config(tmp_path, name)
    if name == "local_sgd":  # its averaging period H is an algorithm option
        cfg.write_text(cfg.read_text().replace("lr = 0.3", "lr = 0.3\nperiod = 4"))
    if name == "dgc":  # the tensor shapes come from the model; 10% density, no warm-up
        cfg.write_text(
            cfg.read_text().replace("lr = 0.3", "lr = 0.3\ndensity = 0.1\nwarmup_epochs = 0")
        )
    if name == "dpsgd":  # simulated time on a network
        cfg.write_text(cfg.read_text() + '[network]\nprofile = "wifi"\nseconds_per_sample = 1e-3\n')
    out = tmp_path / "run"
    assert shoal("run", cfg, "--out", out, "--quiet") == 0
    for f in ("config.toml", "metrics.jsonl", "summary.json", "model.pt"):
        assert (out / f).is_file(), f
    rows = _rows(out)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert rows[-1]["bytes_sent"] > 0
    if name == "dgc":  # (value, index) pairs: well under the 2 workers' dense 2,410 floats
        assert rows[0]["bytes_sent"] < 10 * 2 * 4 * 2410 / 3
    if name == "dpsgd":  # `shoal run` ends with "plot it: shoal plot <out>": that works
        assert 0 < rows[0]["sim_seconds"] < rows[1]["sim_seconds"] < rows[2]["sim_seconds"]
        assert shoal("plot", out) == 0
        for png in ("test_vs_steps.png", "test_vs_bytes_sent.png", "test_vs_sim_time.png"):
            assert (out / png).read_bytes()[:4] == b"\x89PNG", png


def test_dgc_from_a_config_warms_up_over_epochs_of_a_workers_shard(tmp_path):
    from shoal.cli.build import build_clients, build_model
    from shoal.cli.parallel import build_algorithm
    from shoal.cli.registry import CATALOG
    from shoal.compress import Identity
    from shoal.config import load, resolve

    cfg = resolve(load(_config(tmp_path, "dgc")), CATALOG)
    cfg, data, shards = build_clients(cfg, check_sampling=False)
    model, _ = build_model(cfg, data)
    sizes = [len(s) for s in shards]
    alg = build_algorithm(cfg, Identity(), model, sizes)
    assert alg.rule.epoch_steps == -(-sum(sizes) // (2 * 16)) > 1  # 2 workers, batches of 16
    assert alg.rule.shapes == tuple(p.shape for p in model.parameters())
    # its sampled threshold draws follow the run's seed (shoal.cli.build.run_seed)
    assert build_algorithm(cfg.replace("seed", 5), Identity(), model, sizes).rule.seed == 5


def test_the_configured_codec_time_is_charged_per_compressed_step(tmp_path):
    """``network.codec_seconds_per_element``: every step of top-k sync SGD costs ``D`` entries'
    codec time more (the digits MLP: 64 * 32 + 32 + 32 * 10 + 10 = 2,410 parameters)."""
    setup = '[compression]\nname = "top_k"\nratio = 0.1\n[network]\nprofile = "wifi"\n'
    runs = {}
    for label, extra in (("free", ""), ("coded", "codec_seconds_per_element = 1e-6\n")):
        cfg = _config(tmp_path, "sync_sgd", setup + extra)
        assert shoal("run", cfg, "--out", tmp_path / label, "--quiet") == 0
        runs[label] = _rows(tmp_path / label)
    for a, b in zip(runs["free"], runs["coded"], strict=True):
        assert b["test_accuracy"] == a["test_accuracy"]  # timing only
        assert b["sim_seconds"] - a["sim_seconds"] == pytest.approx(a["step"] * 2410e-6)
    # The run names its compressor, as a federated run does.
    summary = json.loads((tmp_path / "free" / "summary.json").read_text())
    assert summary["compressor"] == "top_k(ratio=0.1)"


@pytest.mark.parametrize(
    ("name", "extra", "key"),
    [
        ("sync_sgd", '\ntopology = "ring"\n', "parallel.topology"),
        ("dpsgd", '[compression]\nname = "top_k"\n', "compression.name"),
        ("dpsgd", "[compression]\nerror_feedback = true\n", "compression.error_feedback"),
        ("dgc", '[compression]\nname = "top_k"\nratio = 0.1\n', "its own sparse encoding"),
        ("dpsgd", "\nslowdown_factor = 0.5\n", "parallel.slowdown_factor"),
        ("sync_sgd", '[compression]\nname = "top_k"\nratio = 0.1\n', "two_round"),
    ],
)
def test_parallel_config_mistakes_are_one_line(tmp_path, capsys, name, extra, key):
    text = DP.format(name=name)
    text = (
        text + extra if extra.startswith("[") else text.replace("[parallel]", "[parallel]" + extra)
    )
    if key == "two_round":
        text = text.replace("lr = 0.3", 'lr = 0.3\nreduce = "two_round"')
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert shoal("run", cfg, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
    assert not (tmp_path / "run" / "config.toml").exists()  # the same --out can be used again


@pytest.mark.parametrize(("name", "option"), [("local_sgd", "period"), ("easgd", "tau")])
def test_a_bad_period_names_its_key(tmp_path, capsys, name, option):
    # It said "the averaging period H" / "the communication period tau", not the key to fix.
    cfg = _config(tmp_path, name)
    cfg.write_text(cfg.read_text().replace("lr = 0.3", f"lr = 0.3\n{option} = 0"))
    assert shoal("run", cfg, "--out", tmp_path / "run", "--quiet") == 2
    assert f"algorithm.{option} (the " in capsys.readouterr().err


def test_asynchronous_easgd_in_one_process_is_a_config_error(tmp_path, capsys):
    # Its parameter server needs a process of its own (exit code 1 before, naming no key).
    cfg = _config(tmp_path, "easgd")
    cfg.write_text(cfg.read_text().replace("lr = 0.3", 'lr = 0.3\nmode = "async"'))
    assert shoal("run", cfg, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'algorithm.mode = "async"' in err[0] and "shoal launch" in err[0]
    assert not (tmp_path / "run" / "config.toml").exists()


def test_a_diverging_easgd_moving_rate_is_a_config_error(tmp_path, capsys):
    # Refused when the method started (exit code 1, naming no key; under `shoal launch`
    # every worker failed and torchrun printed its failure report).
    cfg = _config(tmp_path, "easgd")
    cfg.write_text(cfg.read_text().replace("lr = 0.3", "lr = 0.3\nalpha = 0.8"))
    assert shoal("run", cfg, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "algorithm.alpha = 0.8" in err[0] and "2 / (p + 1)" in err[0]
    assert not (tmp_path / "run" / "config.toml").exists()


def test_launch_runs_one_worker_per_process_with_the_simulated_numbers(tmp_path):
    cfg = _config(
        tmp_path, "dpsgd", '[compression]\nname = "identity"\n[network]\nprofile = "4g"\n'
    )
    assert shoal("run", cfg, "--out", tmp_path / "sim", "--quiet") == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shoal", "launch", "--nproc-per-node", "2", str(cfg)]
    cmd += ["--out", str(tmp_path / "dist"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim, dist = _rows(tmp_path / "sim"), _rows(tmp_path / "dist")
    for a, b in zip(dist, sim, strict=True):
        assert a["bytes_sent"] == b["bytes_sent"]
        assert a["sim_seconds"] == pytest.approx(b["sim_seconds"], rel=1e-12)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_data_show_of_a_data_parallel_config_shows_its_workers(tmp_path, capsys):
    # Its workers all train every step: the federated sampling default (10 a round) is moot.
    cfg = _config(tmp_path, "sync_sgd")
    assert shoal("data", "show", cfg, "--png", tmp_path / "w.png") == 0
    out = capsys.readouterr().out
    assert "workers: 2; samples per worker" in out
    assert (tmp_path / "w.png").is_file()


def test_resume_with_more_steps_trains_on_as_one_longer_run(tmp_path):
    cfg = _config(tmp_path, "sync_sgd")  # evaluated every 10 steps
    assert shoal("run", cfg, "--set", "parallel.steps=20", "--out", tmp_path / "a", "--quiet") == 0
    assert shoal("run", "--resume", tmp_path / "a", "--set", "parallel.steps=40", "--quiet") == 0
    assert shoal("run", cfg, "--set", "parallel.steps=40", "--out", tmp_path / "b", "--quiet") == 0
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    for ra, rb in zip(a, b, strict=True):
        for timing in ("wall_seconds", "samples_per_second"):
            ra.pop(timing, None)
            rb.pop(timing, None)
        assert ra == rb


def test_resume_of_a_launched_run_in_one_process_is_refused(tmp_path, capsys):
    """A launched data-parallel run checkpoints per process; one process would start over."""
    cfg = _config(tmp_path, "sync_sgd")
    assert shoal("run", cfg, "--set", "parallel.steps=10", "--out", tmp_path / "a", "--quiet") == 0
    ckpt = tmp_path / "a" / "checkpoint.pt"
    for rank in (0, 1):  # what `shoal launch --nproc-per-node 2` leaves
        (tmp_path / "a" / f"checkpoint.rank{rank}.pt").write_bytes(ckpt.read_bytes())
    ckpt.unlink()
    capsys.readouterr()
    config = (tmp_path / "a" / "config.toml").read_text()
    for _ in range(2):  # the refused resume wrote steps = 20: the second was "not longer"
        assert shoal("run", "--resume", tmp_path / "a", "--set", "parallel.steps=20") == 2
        err = capsys.readouterr().err
        assert "a run on 2 processes" in err and "torchrun --nproc-per-node 2 -m shoal run" in err
        assert len(_rows(tmp_path / "a")) == 1  # its metrics untouched
        assert (tmp_path / "a" / "config.toml").read_text() == config
    # Running into the folder again named `shoal run --resume`, which refuses such a run.
    assert shoal("run", cfg, "--out", tmp_path / "a") == 2
    assert "continue it with `torchrun --nproc-per-node 2 -m shoal run --resume" in (
        capsys.readouterr().err
    )


def test_a_launched_run_resumed_on_another_number_of_processes_is_named(
    tmp_path, capsys, monkeypatch
):
    """It said "partition.num_clients = 2: ... give the partition one client per worker",
    which a resume cannot change."""
    import torch.distributed as dist

    from shoal.runtime.spawn import free_port

    cfg = _config(tmp_path, "sync_sgd")
    out = tmp_path / "a"
    assert shoal("run", cfg, "--set", "parallel.steps=10", "--out", out, "--quiet") == 0
    ckpt = out / "checkpoint.pt"
    for rank in (0, 1):  # what `shoal launch --nproc-per-node 2` leaves
        (out / f"checkpoint.rank{rank}.pt").write_bytes(ckpt.read_bytes())
    ckpt.unlink()
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port()}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    capsys.readouterr()
    try:
        assert shoal("run", "--resume", out, "--set", "parallel.steps=20", "--quiet") == 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    err = capsys.readouterr().err
    assert "it ran on 2 processes, and this job has 1" in err
    assert "torchrun --nproc-per-node 2 -m shoal run --resume" in err


def test_a_run_that_reached_its_target_is_finished(tmp_path, capsys):
    """A plain resume trained it on to parallel.steps (overwriting its metrics and summary),
    and --set parallel.steps=N would stop again at once."""
    cfg = _config(tmp_path, "sync_sgd", "target_accuracy = 0.4\n")  # at step 20 of 30
    out = tmp_path / "a"
    assert shoal("run", cfg, "--out", out, "--quiet") == 0
    rows, summary = _rows(out), (out / "summary.json").read_text()
    assert rows[-1]["step"] < 30 and json.loads(summary)["steps_to_target"] == rows[-1]["step"]
    capsys.readouterr()
    assert shoal("run", "--resume", out, "--quiet") == 0
    assert _rows(out) == rows and (out / "summary.json").read_text() == summary
    done = f"is finished (it met parallel.target_accuracy at step {rows[-1]['step']})"
    assert done in capsys.readouterr().out
    capsys.readouterr()
    assert shoal("run", "--resume", out, "--set", "parallel.steps=60", "--quiet") == 2
    assert "stopped at its parallel.target_accuracy after 20 steps" in capsys.readouterr().err
    assert "steps = 30" in (out / "config.toml").read_text()


@pytest.mark.parametrize("damage", [b"", b"garbage\n", "truncate"])
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, capsys, damage):
    cfg = _config(tmp_path, "sync_sgd")
    out = tmp_path / "a"
    assert shoal("run", cfg, "--set", "parallel.steps=10", "--out", out, "--quiet") == 0
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000] if damage == "truncate" else damage)
    capsys.readouterr()
    assert shoal("run", "--resume", out, "--set", "parallel.steps=20", "--quiet") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ckpt} is not a readable checkpoint" in err, err
    assert "steps = 10" in (out / "config.toml").read_text()


def test_worker_settings_beyond_the_workers_are_named(tmp_path, capsys):
    cfg = _config(tmp_path, "sync_sgd")
    assert shoal("run", cfg, "--set", "parallel.slowdown_worker=2", "--out", tmp_path / "a") == 2
    assert "parallel.slowdown_worker = 2: the workers are 0 to 1" in capsys.readouterr().err
    big = ["--set", "parallel.batch_size=5000", "--set", "parallel.steps=2", "--quiet"]
    assert shoal("run", cfg, *big, "--out", tmp_path / "b") == 0
    assert "parallel.batch_size = 5000 is more than the" in capsys.readouterr().err


def test_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import shoal.cli.parallel as cli_parallel

    def interrupted(cfg, out, **kw):
        (out / "metrics.jsonl").write_text("")  # the run got going
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_parallel, "train_parallel", interrupted)
    assert shoal("run", _config(tmp_path, "sync_sgd"), "--out", tmp_path / "a") != 0
    assert f"shoal run --resume {tmp_path / 'a'}" in capsys.readouterr().err


def test_a_finished_launched_run_names_the_command_that_trains_it_further(tmp_path, capsys):
    """The hint said `shoal run --resume DIR --set parallel.steps=N`, which is refused for a
    run launched on 2 processes (its folder holds a checkpoint per rank)."""
    out = tmp_path / "a"
    assert shoal("run", _config(tmp_path, "sync_sgd"), "--out", out, "--quiet") == 0
    # What `shoal launch --nproc-per-node 2` leaves: one checkpoint per rank, none shared.
    saved = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").unlink()
    for rank in (0, 1):
        (out / f"checkpoint.rank{rank}.pt").write_bytes(saved)
    capsys.readouterr()
    assert shoal("run", "--resume", out, "--quiet") == 0
    said = capsys.readouterr().out
    assert f"torchrun --nproc-per-node 2 -m shoal run --resume {out} --set parallel.steps=N" in said
