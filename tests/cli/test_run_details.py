"""``shoal run`` and the data-parallel config: the run folder it picks,
the config.toml it writes, its summary, ``--resume`` lengths, and the ParallelConfig and
gossip graph a config makes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import SMALL, sets, shoal, write_config

from shoal import compress
from shoal.cli.build import build_clients, build_model
from shoal.cli.parallel import build_algorithm, parallel_config
from shoal.cli.registry import CATALOG
from shoal.cli.run import fresh_out
from shoal.config import Config, ConfigError, load, loads, resolve
from shoal.parallel import ParallelConfig
from shoal.report import read_metrics
from shoal.topology import one_peer_exponential, ring


def test_the_run_folder_is_the_first_unused_one(tmp_path: Path) -> None:
    (tmp_path / "runs" / "small").mkdir(parents=True)  # empty: unused
    assert fresh_out(None, "small") == Path("runs") / "small"
    (tmp_path / "runs" / "small" / "metrics.jsonl").write_text("")
    assert fresh_out(None, "small") == Path("runs") / "small-2"
    (tmp_path / "runs" / "small-2").write_text("")  # a file: used too ([Errno 20] before)
    assert fresh_out(None, "small") == Path("runs") / "small-3"
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "config.toml").write_text("")
    with pytest.raises(ConfigError, match="already holds a run"):
        fresh_out("held", "small")


def test_the_written_config_has_the_data_dependent_values(tmp_path: Path) -> None:
    # partition.num_clients = 0 means "one per user": config.toml says how many that was.
    cfg = write_config(tmp_path, rounds=1)
    natural = [
        "data.name=synthetic",
        "data.num_users=6",
        "partition.scheme=natural",
        "partition.num_clients=0",
    ]
    args = sets([*natural, "sampling.clients_per_round=3"])
    assert shoal("run", cfg, *args, "--unset", "partition.alpha", "--out", "r", "--quiet") == 0
    written = resolve(load(tmp_path / "r" / "config.toml"), CATALOG)
    assert written["partition.num_clients"] == 6


def test_the_summary_names_what_went_up_and_down(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = write_config(tmp_path, rounds=1)
    wire = [
        "compression.name=top_k",
        "compression.ratio=0.1",
        "compression.downlink=qsgd",
        "compression.downlink_levels=4",
    ]
    assert shoal("run", cfg, *sets(wire), "--out", "r", "--quiet") == 0
    out = capsys.readouterr().out
    assert "20 clients (5 per round)" in out  # cli_helpers.SMALL: 5 of 20
    assert f"up ({compress.top_k(0.1).name})" in out
    assert f"down ({compress.qsgd(levels=4).name})" in out


def test_a_resume_to_the_same_length_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = write_config(tmp_path, rounds=2)
    assert shoal("run", cfg, "--out", "r", "--quiet") == 0
    capsys.readouterr()
    assert shoal("run", "--resume", "r", "--set", "rounds=2", "--quiet") == 2
    assert "can only train further, past its 2" in capsys.readouterr().err


def test_a_resume_to_n_killed_before_n_is_taken_again(tmp_path: Path) -> None:
    # `--resume r --set rounds=3` writes rounds = 3 into config.toml first; killed by SIGTERM
    # or SIGKILL before round 3, the same command was then refused ("past its 3").
    assert shoal("run", write_config(tmp_path, rounds=1), "--out", "r", "--quiet") == 0
    config = Path("r") / "config.toml"
    config.write_text(config.read_text().replace("rounds = 1", "rounds = 3"))  # the kill
    assert shoal("run", "--resume", "r", "--set", "rounds=3", "--quiet") == 0
    assert [row["round"] for row in read_metrics(Path("r"))] == [1, 2, 3]
    assert shoal("run", "--resume", "r", "--set", "rounds=3", "--quiet") == 2  # now it is


def test_a_resume_of_a_finished_run_says_so_and_leaves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It trained no round, then rewrote model.pt and summary.json and printed the summary
    # again, as if it had run.
    assert shoal("run", write_config(tmp_path, rounds=2), "--out", "r", "--quiet") == 0
    files = {f.name: f.stat().st_mtime_ns for f in Path("r").iterdir()}
    capsys.readouterr()
    assert shoal("run", "--resume", "r", "--quiet") == 0
    out = capsys.readouterr().out
    assert out.startswith("r is finished (it trained its rounds = 2)")
    assert "shoal run --resume r --set rounds=N (N > 2)" in out
    assert {f.name: f.stat().st_mtime_ns for f in Path("r").iterdir()} == files
    # Lengthened and killed before its new length: its old summary does not make it finished.
    config = Path("r") / "config.toml"
    config.write_text(config.read_text().replace("rounds = 2", "rounds = 3"))
    assert shoal("run", "--resume", "r", "--quiet") == 0
    assert [row["round"] for row in read_metrics(Path("r"))] == [1, 2, 3]


@pytest.mark.parametrize("damage", [b"", b"garbage\n", "truncate"])
def test_a_damaged_checkpoint_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: bytes | str
) -> None:
    # torch.load's EOFError and zip-reader RuntimeError ended in tracebacks, the legacy
    # format's parse in "invalid literal for int() with base 10".
    assert shoal("run", write_config(tmp_path, rounds=2), "--out", "r", "--quiet") == 0
    ckpt = Path("r") / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000] if damage == "truncate" else damage)
    capsys.readouterr()
    assert shoal("run", "--resume", "r", "--set", "rounds=4", "--quiet") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ckpt} is not a readable checkpoint" in err, err
    assert "rounds = 2" in (Path("r") / "config.toml").read_text()  # not the refused 4


def test_a_demo_trained_further_is_still_the_demo(tmp_path: Path) -> None:
    # The longer config was written with a `shoal run` header: `shoal demo` then refused to
    # redo its own folder ("holds a run that is not a demo").
    quick = sets(["rounds=1", "sampling.clients_per_round=2"])
    assert shoal("demo", *quick, "--out", "d", "--quiet") == 0
    assert shoal("run", "--resume", "d", "--set", "rounds=2", "--quiet") == 0
    assert "rounds = 2" in (Path("d") / "config.toml").read_text()
    assert shoal("demo", *quick, "--out", "d", "--quiet") == 0


DP = SMALL.split("[client]")[0].replace('"fedavg"', '"{name}"') + "[parallel]\n{parallel}"


def _dp(name: str, parallel: str = "", extra: str = "") -> Config:
    text = DP.format(rounds=20, name=name, parallel=parallel) + extra
    return resolve(loads(text.replace("rounds = 20\n", "")), CATALOG)


def test_the_parallel_config_is_the_one_built_by_hand() -> None:
    parallel = (
        "steps = 40\nbatch_size = 8\neval_every = 5\ntarget_accuracy = 0.8\n"
        "checkpoint_every = 7\nslowdown_worker = 0\nslowdown_factor = 3.0\n"
    )
    cfg = _dp("sync_sgd", parallel, "[eval]\nbatch_size = 123\n")
    assert parallel_config(cfg, progress=False) == ParallelConfig(
        steps=40,
        batch_size=8,
        seed=3,
        eval_every=5,
        eval_batch_size=123,
        target_accuracy=0.8,
        device="auto",
        progress=False,
        checkpoint_every=7,
        slowdown={0: 3.0},
    )
    defaults = parallel_config(_dp("sync_sgd"), progress=True)
    assert defaults == ParallelConfig(
        steps=500,
        batch_size=32,
        seed=3,
        eval_every=50,
        eval_batch_size=1000,
        target_accuracy=None,
        checkpoint_every=100,
    )


@pytest.mark.parametrize(("name", "graph"), [("sgp", one_peer_exponential), ("dpsgd", ring)])
def test_the_auto_topology_is_the_documented_graph(name: str, graph: Callable) -> None:
    cfg = _dp(name)
    cfg, data, shards = build_clients(cfg, check_sampling=False)
    model, _ = build_model(cfg, data)
    alg = build_algorithm(cfg, compress.identity(), model, [len(s) for s in shards])
    expected = graph(len(shards))
    assert alg.topology.name == expected.name
    assert (alg.topology.mixing_WW == expected.mixing_WW).all()


def test_a_truncated_data_file_is_one_line(tmp_path, capsys) -> None:
    # A gzip cut short raised a bare EOFError traceback from deep in the reader.
    import gzip

    from shoal.data import CATALOGUE

    folder = tmp_path / "d"
    folder.mkdir()
    for remote in CATALOGUE["mnist"]:
        whole = gzip.compress(bytes(range(256)) * 64, mtime=0)
        (folder / remote.filename).write_bytes(whole[: len(whole) // 2])
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nname = "mnist"\ndir = "{folder.as_posix()}"\n')
    assert shoal("run", config, "--out", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err, err


@pytest.mark.parametrize(("client", "refused"), [("", False), ("[client]\nepochs = 2\n", True)])
def test_fedsgd_refuses_other_local_work_only_when_asked_for(
    tmp_path, capsys, client, refused
) -> None:
    # It warned that the configured local work was ignored even when nothing was configured;
    # then it warned with LocalWork reprs where a config refuses a key it would ignore.
    config = tmp_path / "c.toml"
    config.write_text('rounds = 1\n[algorithm]\nname = "fedsgd"\nlr = 0.1\n' + client)
    assert shoal("run", config, "--out", tmp_path / "run", "--quiet") == (2 if refused else 0)
    err = capsys.readouterr().err
    assert ("fixes its own local work (epochs = 1, batch_size = 0," in err) == refused
    assert "LocalWork" not in err


def test_an_out_folder_below_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It ended as "[Errno 20] Not a directory" with exit code 1, when the run made the folder.
    (tmp_path / "afile").write_text("")
    cfg = write_config(tmp_path)
    assert shoal("run", cfg, "--out", "afile/sub/deeper", "--quiet") == 2
    assert "--out afile/sub/deeper: afile is a file, not a folder" in capsys.readouterr().err


def test_an_unwritable_file_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `shoal probe --json` on a read-only mount measured for minutes, then failed to write.
    import os

    from shoal.cli import UsageError, file_arg

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with pytest.raises(UsageError, match="--json .*t.json: not writable"):
        file_arg(str(tmp_path / "ro" / "t.json"), "--json")
    assert file_arg(str(tmp_path / "t.json"), "--json") == tmp_path / "t.json"


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("data.download=true", "data.download = true: digits reads no files"),
        ("data.cache_dir=/tmp/x", 'data.cache_dir = "/tmp/x": digits reads no files'),
        (
            "parallel.slowdown_factor=10",  # on a federated config: [parallel] is refused
            'parallel.slowdown_factor is set, but algorithm.name = "fedavg" is federated',
        ),
    ],
)
def test_keys_that_would_be_ignored_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, assignment: str, words: str
) -> None:
    # Accepted and ignored before: the data options of a dataset that reads no files.
    assert shoal("run", write_config(tmp_path, rounds=1), "--set", assignment, "--quiet") == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("assignment", ["data.download=true", 'data.cache_dir="elsewhere"'])
def test_cache_keys_beside_a_data_dir_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, assignment: str
) -> None:
    # data.dir wins: the cache folder and the download were accepted and ignored.
    sets = ["--set", "data.name=mnist", "--set", f"data.dir={tmp_path}", "--set", assignment]
    assert shoal("run", write_config(tmp_path, rounds=1), *sets, "--quiet") == 2
    assert f"{assignment.replace('=', ' = ')}: data.dir = " in capsys.readouterr().err


def test_a_slowdown_factor_without_a_worker_is_refused() -> None:
    cfg = _dp("dpsgd", "steps = 2\nslowdown_factor = 10.0\n")
    with pytest.raises(ConfigError, match="slowdown_worker names, and it names none"):
        parallel_config(cfg, progress=False)
    parallel_config(_dp("dpsgd", "steps = 2\nslowdown_factor = 5.0\n"), progress=False)
