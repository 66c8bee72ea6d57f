"""``shoal plot``, ``shoal data list|show|fetch`` and ``shoal demo``'s packaged config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import shoal, write_config
from matplotlib.image import imread

from shoal.cli.registry import CATALOG, DATASETS
from shoal.cli.run import demo_config
from shoal.config import loads, resolve
from shoal.data.download import CATALOGUE
from shoal.report import read_metrics


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_overlays_two_runs(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert shoal("plot", *two_runs, "--out", "pngs") == 0
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == ["test_vs_rounds.png", "test_vs_uplink_bytes.png"]
    for name in names:
        assert _is_png(tmp_path / "pngs" / name)
        assert imread(tmp_path / "pngs" / name).shape[1] > 800  # two panels side by side
    assert "test_vs_rounds.png" in capsys.readouterr().out


def _with_sim_time(run: Path, to: Path) -> Path:
    """A copy of ``run`` whose metrics have ``sim_seconds``, as a run with a network has."""
    shutil.copytree(run, to)
    rows = [json.loads(line) for line in (to / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["sim_seconds"] = 0.5 * r["round"]
    (to / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return to


def test_sim_time_plot_only_when_metrics_have_it(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    run = _with_sim_time(two_runs[0], tmp_path / "with_sim")
    assert shoal("plot", run) == 0  # one run: the PNGs go into its folder
    assert _is_png(run / "test_vs_sim_time.png")
    assert _is_png(run / "test_vs_rounds.png")


def test_plot_into_a_folder_of_earlier_plots_leaves_no_figure_of_other_runs(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    run = _with_sim_time(two_runs[0], tmp_path / "with_sim")
    assert shoal("plot", run, two_runs[1]) == 0  # into ./plots, a simulated-time figure too
    assert _is_png(tmp_path / "plots" / "test_vs_sim_time.png")
    assert shoal("plot", *two_runs) == 0  # runs without a network: no simulated time
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["test_vs_rounds.png", "test_vs_uplink_bytes.png"]


def test_plot_of_a_folder_without_metrics_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    assert shoal("plot", "empty") == 2  # a usage mistake, as a missing folder is
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl" in err


def test_an_overlay_names_a_run_that_has_no_line(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A run killed before its first evaluation was left out of the legend without a word.
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "metrics.jsonl").write_text("")
    assert shoal("plot", two_runs[0], "early", "--out", "pngs") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "early: no evaluated round (yet); it has no line" in err


def test_an_overlay_names_a_run_without_simulated_time(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # test_vs_sim_time.png left out a run without [network] without a word.
    timed = tmp_path / "timed"
    timed.mkdir()
    rows = (two_runs[0] / "metrics.jsonl").read_text().splitlines()
    with_time = [{**json.loads(r), "sim_seconds": 2.0 * i} for i, r in enumerate(rows, 1)]
    (timed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in with_time))
    assert shoal("plot", timed, two_runs[1], "--out", "pngs") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{two_runs[1].name}: no simulated time" in err
    assert (tmp_path / "pngs" / "test_vs_sim_time.png").is_file()


def test_plot_takes_a_metrics_file_and_refuses_one_run_named_twice(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # RUN/metrics.jsonl was "no such run folder"; RUN and RUN/ drew one line under two labels.
    run = two_runs[0]
    assert shoal("plot", run / "metrics.jsonl", two_runs[1], "--out", "pngs") == 0
    capsys.readouterr()
    assert shoal("plot", run, f"{run}/", "--out", "pngs") == 2
    assert "are the same run; name it once" in capsys.readouterr().err


def test_a_symbolic_link_to_a_run_is_labelled_by_its_own_name(two_runs: tuple[Path, Path]) -> None:
    from shoal.report import run_labels

    link = two_runs[0].parent / "renamed"
    link.symlink_to(two_runs[0])
    assert run_labels([link, two_runs[1]]) == ["renamed", two_runs[1].name]


def test_an_overlay_of_a_data_parallel_and_a_federated_run_says_they_part(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The data-parallel run was missing from the rounds figures (and the federated one from
    # the steps figures) without a word.
    steps = tmp_path / "steps"
    steps.mkdir()
    rows = [{"step": 10 * i, "test_accuracy": 0.5, "test_loss": 1.0, "bytes_sent": 100 * i}
            for i in (1, 2)]  # fmt: skip
    (steps / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert shoal("plot", two_runs[0], steps, "--out", "pngs") == 0
    assert "steps: data-parallel run(s), drawn against steps" in capsys.readouterr().err


def test_plot_of_a_run_without_evaluations_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "early").mkdir()  # e.g. killed before its first evaluation
    (tmp_path / "early" / "metrics.jsonl").write_text("")
    assert shoal("plot", "early") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to plot" in err


def test_a_half_written_last_row_is_skipped_and_a_complete_bad_row_named(
    tmp_path: Path,
) -> None:
    """A run killed while appending leaves a last line without its newline: skipped. A
    complete line that is not JSON (every row is written with its newline) is an error."""
    row = json.dumps({"round": 1, "test_acc": 0.5}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(row + '{"round": 2, "te')
    assert read_metrics(tmp_path) == [{"round": 1, "test_acc": 0.5}]
    for text in ("garbage\n", row + "garbage\n", "garbage\n" + row):
        (tmp_path / "metrics.jsonl").write_text(text)
        with pytest.raises(ValueError, match="not a JSON line"):
            read_metrics(tmp_path)


@pytest.mark.parametrize(
    ("value", "said"),
    [('"12"', "sim_seconds is '12', not a number"), ("[0.5]", "sim_seconds is [0.5], not a")],
)
def test_a_row_with_a_value_that_is_not_a_number_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str, said: str
) -> None:
    # "12" failed in the plotting's comparison with a bare TypeError, a list in float().
    row = '{"round": 1, "test_accuracy": 0.5, "test_loss": 1.0, "sim_seconds": ' + value + "}"
    (tmp_path / "metrics.jsonl").write_text(row + "\n")
    assert shoal("plot", tmp_path, "--out", tmp_path / "p") != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"metrics.jsonl:1: {said}" in err


def test_a_byte_order_mark_is_read_and_other_bytes_named(tmp_path: Path) -> None:
    # An editor's BOM made a valid first row "not a JSON line"; bytes that are not UTF-8
    # gave the codec's message, naming no file.
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"round": 1, "test_accuracy": 0.5}\n')
    assert read_metrics(tmp_path) == [{"round": 1, "test_accuracy": 0.5}]
    path.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: not UTF-8 text \(byte 0\)"):
        read_metrics(tmp_path)


def test_data_show_prints_histogram_and_writes_png(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = write_config(tmp_path)
    assert shoal("data", "show", cfg, "--png", "h.png", "--set", "partition.alpha=0.3") == 0
    out = capsys.readouterr().out
    assert "total" in out and "client" in out  # format_histogram's table
    assert "clients: 20" in out and "min" in out and "median" in out and "max" in out
    assert _is_png(tmp_path / "h.png")


def test_data_show_default_png_name(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, name="exp")
    assert shoal("data", "show", cfg) == 0
    assert _is_png(tmp_path / "exp-labels.png")


def test_data_show_names_the_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # matplotlib adds ".png" to a name without a suffix: the line said "heat map: labels".
    cfg = write_config(tmp_path)
    assert shoal("data", "show", cfg, "--png", "labels", "--rows", "0") == 0
    assert "heat map: labels.png" in capsys.readouterr().out
    assert _is_png(tmp_path / "labels.png")
    # A folder (written as "<folder>.png") and "" (the default name) are refused first.
    (tmp_path / "figs").mkdir()
    for bad in ("figs", ""):
        assert shoal("data", "show", cfg, "--png", bad) == 2
        assert "--png" in capsys.readouterr().err
    assert not (tmp_path / "figs.png").exists()
    # A suffix matplotlib cannot write failed after the partition was built, with exit 1.
    assert shoal("data", "show", cfg, "--png", "labels.foo") == 2
    assert "--png labels.foo: name an image file (." in capsys.readouterr().err


def test_data_list_names_every_dataset(capsys: pytest.CaptureFixture) -> None:
    assert shoal("data", "list") == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert "not in the cache" in out  # the test cache is empty


def test_data_list_does_not_call_a_damaged_cache_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It said "in the cache", and the next run refused the files for their SHA-256.
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    for remote in CATALOGUE["mnist"]:
        (folder / remote.filename).write_bytes(bytes(100))
    assert shoal("data", "list") == 0
    out = capsys.readouterr().out
    assert "in the cache but damaged (a file fails its SHA-256): shoal data fetch mnist" in out


def test_data_fetch_unknown_name_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert shoal("data", "fetch", "imagenet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mnist" in err
    assert shoal("data", "fetch", "digits") == 0


def test_demo_config_is_valid_and_shipped() -> None:
    cfg = resolve(loads(demo_config()), CATALOG)
    assert cfg["data.name"] == "digits" and cfg["partition.num_clients"] == 100
    assert cfg["sampling.clients_per_round"] == 10 and cfg["algorithm.name"] == "fedavg"


def test_demo_runs_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The real demo, shortened: the packaged config, 2 rounds, plots in the run folder.
    assert shoal("demo", "--quiet", "--set", "rounds=2", "--out", "d") == 0
    out = capsys.readouterr().out
    assert "metrics: d" in out and "test_vs_rounds.png" in out
    assert _is_png(tmp_path / "d" / "test_vs_rounds.png")
    # `make demo` twice: the second run redoes the demo in place.
    assert shoal("demo", "--quiet", "--set", "rounds=1", "--out", "d") == 0
    assert "replacing the earlier demo" in capsys.readouterr().out
    assert len((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()) == 1
    # another command's run is not the demo's to replace
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text("# The resolved config of a shoal run\n")
    assert shoal("demo", "--quiet", "--out", "r") == 2
    assert "holds a run that is not a demo" in capsys.readouterr().err


def test_demo_switched_to_a_data_parallel_algorithm_runs_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # It trained, then failed on an assert (no result object) without plotting.
    switch = ["algorithm.name=sync_sgd", "parallel.steps=4", "parallel.eval_every=2"]
    args = [a for s in switch for a in ("--set", s)]
    args += [a for k in ("rounds", "client", "sampling") for a in ("--unset", k)]
    for _ in range(2):  # and again in place: its config.toml says it is the demo's
        assert shoal("demo", "--quiet", *args, "--out", "d") == 0
        assert "test_vs_steps.png" in capsys.readouterr().out
    assert _is_png(tmp_path / "d" / "test_vs_steps.png")


def test_a_figure_names_only_the_runs_it_draws_each_in_its_own_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    from shoal.report import plot_runs

    legends: dict[str, dict[str, str]] = {}

    def record(fig: Figure, path: Path, **kw: object) -> None:
        lines = fig.axes[0].get_lines()
        legends[Path(path).stem] = {ln.get_label(): ln.get_color() for ln in lines}

    monkeypatch.setattr(Figure, "savefig", record)
    federated = [{"round": r, "cum_uplink_bytes": 100 * r, "test_accuracy": 0.1 * r,
                  "test_loss": 2.0 - 0.1 * r} for r in (1, 2)]  # fmt: skip
    parallel = [{"step": s, "bytes_sent": 50 * s, "test_accuracy": 0.2, "test_loss": 1.9}
                for s in (10, 20)]  # fmt: skip
    plot_runs({"fedavg": federated, "sync_sgd": parallel, "fedprox": federated}, tmp_path)
    assert set(legends["test_vs_rounds"]) == {"fedavg", "fedprox"}
    assert set(legends["test_vs_bytes_sent"]) == {"sync_sgd"}
    # Colours follow the run's place on the command line, not its place in one figure.
    assert legends["test_vs_rounds"]["fedprox"] == "C2"
    assert legends["test_vs_steps"]["sync_sgd"] == "C1"


def test_every_run_is_in_the_legend_and_runs_past_ten_look_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run named "_baseline" was drawn but left out of the legend (matplotlib skips labels
    that start with "_"), and run 11 had run 1's colour and line."""
    from matplotlib.figure import Figure

    from shoal.report import plot_runs

    figures: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    rows = [{"round": r, "test_accuracy": 0.1 * r, "test_loss": 1.0 / r} for r in (1, 2)]
    names = ["_baseline", *(f"run{i}" for i in range(1, 11))]
    plot_runs(dict.fromkeys(names, rows), tmp_path)
    acc = figures[0].axes[0]
    assert [t.get_text() for t in acc.get_legend().get_texts()] == names
    first, eleventh = acc.get_lines()[0], acc.get_lines()[10]
    assert first.get_color() == eleventh.get_color()
    assert first.get_linestyle() != eleventh.get_linestyle()
