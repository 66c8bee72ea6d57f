"""``shoal run`` (one experiment from a TOML file, or ``--resume`` of a killed one) and
``shoal demo`` (the packaged default experiment, then its plots)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from shoal.cli import UsageError, add_set_option, config_from_args, folder_arg, parallel
from shoal.cli.build import Experiment, build
from shoal.cli.registry import CATALOG
from shoal.config import Config, ConfigError, dumps, load, loads, resolve, resolve_overridden
from shoal.files import LOCK, FolderInUse, replace_text, run_lock
from shoal.report import human_bytes, plot_runs, read_metrics, seconds
from shoal.runtime.procgroup import as_peer_failure, in_distributed_env, shutdown
from shoal.train import CHECKPOINT, METRICS, MODEL, SUMMARY, TrainResult, train

CONFIG = "config.toml"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run one experiment from a TOML config",
        description="Run one experiment from a TOML config, or continue a killed run.",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="the experiment config")
    add_set_option(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: runs/<config name>, or -2, -3, ... if taken)",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its config.toml and checkpoint; with --set rounds=N "
        "(or parallel.steps=N) train it further, to N",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "demo",
        help="FedAvg on scikit-learn's digits (no download), then plots",
        description="Run the packaged demo config (FedAvg, 100 non-IID clients on digits), "
        "then plot it into the run folder.",
    )
    add_set_option(d)
    d.add_argument(
        "--out",
        metavar="DIR",
        help="run folder, replaced if it holds an earlier demo (default: runs/demo)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)


def fresh_out(out: str | None, stem: str) -> Path:
    """The run folder: ``--out``, or the first unused ``runs/<stem>[-k]``."""
    if out is not None:
        path = folder_arg(out)
        _check_unused(path, out)
        return path
    return next(p for p in _default_outs(stem) if not _taken(p))


def _check_unused(path: Path, out: str) -> None:
    if (path / CONFIG).exists():
        raise ConfigError(
            f"--out {out}: already holds a run; continue it with "
            f"`{parallel.resume_command(path)}` or choose another folder"
        )


def _default_outs(stem: str) -> Iterator[Path]:
    base = Path("runs") / stem
    yield base
    k = 2
    while True:
        yield base.with_name(f"{base.name}-{k}")
        k += 1


def _taken(path: Path) -> bool:
    """Whether ``path`` is no folder to start a run in: a file, or a folder with files (a
    lock left by a run that ended before writing anything does not count)."""
    return path.exists() and (not path.is_dir() or any(p.name != LOCK for p in path.iterdir()))


@contextlib.contextmanager
def claimed_out(out: str | None, stem: str) -> Iterator[Path]:
    """:func:`fresh_out`, locked for this process (:func:`shoal.files.run_lock`) and checked
    again under the lock: two runs started at once chose the same folder and wrote into it
    together. Without ``--out``, a folder another run has locked is passed over."""
    if out is not None:
        path = folder_arg(out)
        with run_lock(path):
            _check_unused(path, out)
            yield path
        return
    for path in _default_outs(stem):
        if _taken(path):
            continue
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(run_lock(path))
            except FolderInUse:
                continue
            if _taken(path):  # filled between the look and the lock
                continue
            yield path
            return


def _write_config(cfg: Config, path: Path, made_by: str = "run") -> None:
    header = f"The resolved config of a shoal {made_by}: every default filled in.\n"
    header += "Continue a killed run with: shoal run --resume <this folder>"
    replace_text(path, dumps(cfg, header))


def _made_by(text: str) -> str:
    """The command a ``config.toml``'s header names (see :func:`_write_config`)."""
    return "demo" if "shoal demo" in text.partition("\n")[0] else "run"


def execute(
    cfg: Config, out: Path, *, resume: bool, progress: bool, made_by: str = "run"
) -> TrainResult | None:
    """Build the experiment, write ``config.toml`` (its header names the command that
    ``made_by`` it) and train; then print a short summary. A data-parallel config (see
    :mod:`shoal.cli.parallel`) returns None."""
    if parallel.is_parallel(cfg):
        execute_parallel(cfg, out, resume=resume, progress=progress, made_by=made_by)
        return None
    started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        if cfg["num_threads"]:
            torch.set_num_threads(cfg["num_threads"])
        exp = build(cfg, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        fresh = not resume and _rank() == 0
        if fresh:
            _write_config(exp.config, out / CONFIG, made_by)
        try:
            result = train(
                exp.model,
                exp.data,
                exp.clients,
                exp.algorithm,
                exp.train_config,
                runtime=exp.runtime,
                compressor=exp.compressor,
                downlink_compressor=exp.downlink,
                network=exp.network,
                init=exp.init,
                out_dir=out,
                resume=resume,
                callback=_fault_injection(),
            )
        except BaseException:
            # What train() refuses before round 1 (SCAFFOLD with sampling.replace = true)
            # leaves no run folder behind either, as in execute_parallel: else the corrected
            # command's --out "already holds a run", and resuming that fails the same way.
            if fresh and not any((out / f).exists() for f in (METRICS, CHECKPOINT, SUMMARY)):
                (out / CONFIG).unlink(missing_ok=True)
            raise
    except KeyboardInterrupt:
        _resume_hint(out)
        raise
    except FloatingPointError as e:
        raise _diverged(e, out) from None
    finally:
        torch.set_num_threads(threads)
    if _rank() == 0:
        print(summary_text(exp, result, out, time.perf_counter() - started))
    return result


def execute_parallel(
    cfg: Config, out: Path, *, resume: bool, progress: bool, made_by: str = "run"
) -> None:
    if os.environ.get("SHOAL_FAULT_KILL") and _rank() == 0:
        warnings.warn(
            "SHOAL_FAULT_KILL kills a worker of a federated run; this one is data-parallel",
            stacklevel=2,
        )
    started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        if cfg["num_threads"]:
            torch.set_num_threads(cfg["num_threads"])
        out.mkdir(parents=True, exist_ok=True)
        fresh = not resume and _rank() == 0
        if fresh:
            _write_config(cfg, out / CONFIG, made_by)
        try:
            result = parallel.train_parallel(cfg, out, resume=resume, progress=progress)
        except BaseException:
            # A mistake found while building the run (the method's options, its compressor)
            # leaves no run folder behind, as for a federated run, whose build comes first.
            if fresh and not any((out / f).exists() for f in (METRICS, CHECKPOINT, SUMMARY)):
                (out / CONFIG).unlink(missing_ok=True)
            raise
    except KeyboardInterrupt:
        _resume_hint(out)
        raise
    except FloatingPointError as e:
        raise _diverged(e, out) from None
    finally:
        torch.set_num_threads(threads)
    if result.summary:  # the reporting process (rank 0, or EASGD's server)
        print(parallel.summary_text(cfg, result, out, time.perf_counter() - started))


def _resume_hint(out: Path) -> None:
    """After Ctrl-C: how to go on, when the run got as far as its folder."""
    if (out / CONFIG).is_file() and _rank() == 0:
        print(f"\ncontinue this run with: {parallel.resume_command(out)}", file=sys.stderr)


def _diverged(error: FloatingPointError, out: Path) -> FloatingPointError:
    """A diverged run's error, saying what became of its folder: resuming it would diverge
    again, so a new run needs another one."""
    metrics = out / METRICS
    rows = metrics.is_file() and bool(metrics.read_text(encoding="utf-8").strip())
    kept = "keeps the run's rows up to here" if rows else "has no metrics row yet"
    return FloatingPointError(
        f"{error} ({out} {kept}; to run again, remove it or choose another --out)"
    )


def _resumable(cfg: Config, out: Path) -> bool:
    """Whether ``out`` holds a checkpoint this process can continue from."""
    if parallel.is_parallel(cfg):
        return parallel.has_checkpoint(out)
    return (out / CHECKPOINT).is_file()


def _rank() -> int:
    """This process's rank in a distributed run (0 otherwise)."""
    return int(os.environ.get("RANK", "0")) if in_distributed_env() else 0


def _fault_injection() -> Callable[[dict[str, Any]], None] | None:
    """``SHOAL_FAULT_KILL=RANK:ROUND``: that rank kills itself (SIGKILL) after that round of
    the first attempt — to test what a job does when a worker dies."""
    spec = os.environ.get("SHOAL_FAULT_KILL")
    if not spec:
        return None
    # Checked in every attempt: a restarted job skipped the check and ended as if it passed.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        rank, round_ = (int(v) for v in spec.split(":"))
    except ValueError:
        raise UsageError(
            f"SHOAL_FAULT_KILL must be RANK:ROUND, two integers; got {spec!r}"
        ) from None
    if not (0 <= rank < world and round_ >= 1):
        raise UsageError(
            f"SHOAL_FAULT_KILL={spec}: no such rank or round (ranks 0 to {world - 1}, rounds "
            "from 1): nothing would be killed"
        )
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None

    def kill(row: dict[str, Any]) -> None:
        if _rank() == rank and row["round"] == round_:
            print(f"shoal: fault injection: rank {rank} SIGKILLs itself", file=sys.stderr)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def _distributed_run(args: argparse.Namespace) -> int:
    """A worker of `shoal launch` / torchrun: every rank shares ``--out``; rank 0 writes it.
    After an elastic restart the workers continue from the checkpoint. A collective broken by
    a dead peer ends this worker with one line (``PeerFailure``), not a traceback: the
    launcher's report names the rank that died."""
    shorter = None
    if args.resume:
        cfg, out, shorter = _resume_config(args)
        if shorter is None and (finished := _finished(cfg, out)):  # every rank reads the same
            if _rank() == 0:
                print(finished)
            return 0
    else:
        if not args.config or not args.out:
            raise UsageError(
                "a distributed run needs CONFIG.toml and --out DIR: every rank writes to and "
                "resumes from the same folder (`shoal launch` picks one for you)"
            )
        out = Path(args.out)
        cfg = config_from_args(args)
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    if not args.resume and not restarted and _rank() == 0:
        # torchrun -m shoal run CONFIG --out DIR started a finished or killed run over. Rank 0
        # alone: the others could find the config.toml it writes (it ends the job anyway).
        fresh_out(args.out, "")
    resume = (bool(args.resume) or restarted) and _resumable(cfg, out)
    done = False
    try:
        with _lengthened(out, cfg, shorter):
            execute(cfg, out, resume=resume, progress=not args.quiet)
        done = True
    except RuntimeError as e:
        if (lost := as_peer_failure(e, _rank())) is None:
            raise
        raise lost from e
    finally:
        shutdown(barrier=done)
    return 0


def summary_text(exp: Experiment, result: TrainResult, out: Path, elapsed: float) -> str:
    s = result.summary
    cfg = exp.config
    lines = [
        f"{s['algorithm']} on {exp.data.name}: {s['rounds']} round{'s' * (s['rounds'] != 1)}, "
        f"{s['num_clients']} clients "
        f"({cfg['sampling.clients_per_round']} per round), {s['num_params']:,} parameters"
    ]
    if s["final_test_accuracy"] is not None:
        lines.append(
            f"  final test accuracy {s['final_test_accuracy']:.2%} "
            f"(best {s['best_test_accuracy']:.2%}), test loss {s['final_test_loss']:.4f}"
        )
    lines.append(
        f"  sent {human_bytes(s['total_uplink_bytes'])} up ({exp.compressor.name}), "
        f"{human_bytes(s['total_downlink_bytes'])} down ({exp.downlink.name})"
    )
    if exp.network is not None and result.metrics:
        sim = result.metrics[-1]["sim_seconds"]
        lines.append(f"  simulated time on {exp.network.network.name}: {seconds(sim)}")
    lines.append(f"  time: {s['wall_seconds']:.1f} s training, {elapsed:.1f} s this command")
    files = ", ".join((CONFIG, METRICS, SUMMARY, MODEL, CHECKPOINT))
    lines.append(f"  files in {out}{os.sep}: {files}")
    return "\n".join(lines)


_LENGTH = ("rounds", "parallel.steps")
"""The keys ``--resume`` may raise: a finished (or killed) run then trains further."""


def _length(cfg: Config) -> str:
    return "parallel.steps" if parallel.is_parallel(cfg) else "rounds"


def _longer(cfg: Config, assignments: list[str], out: Path, *, strict: bool) -> Config:
    """``cfg`` with its length raised by ``assignments`` (``rounds=N`` or ``parallel.steps=N``).
    Every choice is keyed by the round or step, so the run ends as one of ``N`` from the start
    would, apart from the evaluation and checkpoint that ended the shorter one. ``strict=False``
    (the processes of a distributed job) takes a length already at ``N`` as given: rank 0 may
    have written it, or an elastic restart repeats the command."""
    length = _length(cfg)
    for key in (a.partition("=")[0].strip() for a in assignments):
        if key != length:
            raise ConfigError(f"{key}: this run's length is {length}; --set {length}=N")
    longer = resolve_overridden(cfg.values, assignments, [], CATALOG, str(out / CONFIG))
    # Equal is taken as given where the run has not got there yet: a resume to N that was
    # killed (SIGTERM, SIGKILL) had written N into config.toml, and the same command was then
    # refused as "not past N".
    same = longer[length] == cfg[length]
    if longer[length] < cfg[length] or (strict and same and _trained(out) >= cfg[length]):
        raise ConfigError(
            f"{length} = {longer[length]}: a resumed run can only train further, past its "
            f"{cfg[length]}"
        )
    if length == "parallel.steps":
        reached = (_summary(out) or {}).get("steps_to_target")
        if reached is not None:  # it would stop again at once
            raise ConfigError(
                f"{length} = {longer[length]}: the run stopped at its "
                f"parallel.target_accuracy after {reached} steps, so it is finished; start a "
                "new run without the target (or with a higher one) to train longer"
            )
    return longer


def _finished(cfg: Config, out: Path) -> str | None:
    """What to say when ``--resume`` names a run that ended as its config says (its summary
    written, its last round or step reached, or its target met); None if it did not. Training
    it again would rewrite its model and summary and change nothing."""
    length, summary = _length(cfg), _summary(out)
    if summary is None:
        return None
    reached = summary.get("steps_to_target")
    further = ""
    if reached is not None:
        done = f"it met parallel.target_accuracy at step {reached}"
    elif (trained := _trained(out)) >= cfg[length]:
        done = f"it trained its {length} = {trained}"
        more = f"--set {length}=N (N > {cfg[length]})"
        again = (  # a launched data-parallel run continues on as many processes
            parallel.resume_command(out)
            if parallel.is_parallel(cfg)
            else f"shoal run --resume {shlex.quote(str(out))}"
        )
        further = f"; to train it further: {again} {more}"
    else:
        return None
    return f"{out} is finished ({done}): nothing to continue{further}"


def _summary(out: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` (written when it ended); None when there is none, or it
    cannot be read."""
    try:
        summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _trained(out: Path) -> int:
    """The last round (step) of the run in ``out`` with a metrics row; 0 for none, or for
    rows that cannot be read."""
    try:
        rows = read_metrics(out)
    except (OSError, ValueError):
        return 0
    return int(rows[-1].get("round", rows[-1].get("step", 0))) if rows else 0


@contextlib.contextmanager
def _lengthened(out: Path, cfg: Config, shorter: Config | None) -> Iterator[None]:
    """Write the longer ``cfg`` of a resume over the ``shorter`` one in the run's
    ``config.toml`` (keeping the command its header names), so that a later resume goes on to
    its length, and put the old file back if the resume fails before training past the old
    length: a refused resume (a checkpoint of another world size, a damaged one) left the new
    length behind, and the same command was then refused as "not longer"."""
    if shorter is None or _rank() != 0:
        yield
        return
    before = (out / CONFIG).read_text(encoding="utf-8")
    old = shorter[_length(shorter)]
    _write_config(cfg, out / CONFIG, _made_by(before))
    try:
        yield
    except BaseException:
        # Trained past `old`, the new length holds; none, or unreadable: the old one is safe.
        if _trained(out) <= old:
            replace_text(out / CONFIG, before)
        raise


def _resume_config(args: argparse.Namespace) -> tuple[Config, Path, Config | None]:
    """The config of the run ``--resume`` names (longer with ``--set rounds=N``), its folder,
    and, when ``--set`` made it longer, the config before (see :func:`_lengthened`); the same
    checks in one process and in each of a distributed job's."""
    lengths = [a.partition("=")[0].strip() for a in args.set]
    if args.config or args.unset or args.out or any(k not in _LENGTH for k in lengths):
        raise UsageError(
            "--resume DIR takes no CONFIG, --unset or --out, and no --set but rounds=N or "
            "parallel.steps=N (to train the run further): it continues as its config.toml says"
        )
    out = Path(args.resume)
    if not (out / CONFIG).is_file():
        raise ConfigError(f"--resume {args.resume}: no {CONFIG} there (not a run folder)")
    raw = load(out / CONFIG)
    shorter = None
    try:
        cfg = resolve(raw, CATALOG)
        if args.set:
            longer = _longer(cfg, args.set, out, strict=not in_distributed_env())
            if longer[_length(cfg)] > cfg[_length(cfg)]:
                shorter = cfg
            cfg = longer
    except ConfigError as e:
        data_dir = Path(str(raw.get("data", {}).get("dir", "/")))
        if str(e).startswith("data.dir") and not data_dir.expanduser().is_absolute():
            raise ConfigError(
                f"{e}; a run's {CONFIG} keeps data.dir as it was given, so resume from the "
                "folder the run was started in"
            ) from None
        raise
    return cfg, out, shorter


def cmd_run(args: argparse.Namespace) -> int:
    if in_distributed_env():
        return _distributed_run(args)
    if args.resume:
        cfg, out, shorter = _resume_config(args)
        if shorter is None and (done := _finished(cfg, out)):
            print(done)
            return 0
        with run_lock(out), _lengthened(out, cfg, shorter):
            # Killed before the first checkpoint: nothing to continue, so start over.
            execute(cfg, out, resume=_resumable(cfg, out), progress=not args.quiet)
        return 0
    if not args.config:
        raise UsageError("give a CONFIG.toml to run, or --resume DIR")
    cfg = config_from_args(args)
    with claimed_out(args.out, Path(args.config).stem) as out:
        execute(cfg, out, resume=False, progress=not args.quiet)
    print(f"  plot it: shoal plot {shlex.quote(str(out))}")
    return 0


def demo_config() -> str:
    """The text of the packaged ``demo.toml``."""
    return resources.files("shoal.configs").joinpath("demo.toml").read_text(encoding="utf-8")


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, loads(demo_config(), "demo.toml"), "demo.toml")
    out = Path("runs") / "demo" if args.out is None else folder_arg(args.out)
    if (out / CONFIG).is_file() and _made_by((out / CONFIG).read_text(encoding="utf-8")) != "demo":
        # The demo is a fixed job: running it again redoes it in place (only its files go),
        # but another command's run is not the demo's to delete.
        raise ConfigError(f"--out {out}: holds a run that is not a demo; choose another folder")
    with run_lock(out):
        if (out / CONFIG).is_file():
            print(f"replacing the earlier demo in {out}")
            for name in (CONFIG, METRICS, SUMMARY, MODEL, CHECKPOINT):
                (out / name).unlink(missing_ok=True)
            for png in out.glob("test_vs_*.png"):  # a figure the new run may not draw
                png.unlink()
        execute(cfg, out, resume=False, progress=not args.quiet, made_by="demo")
    # From the file: a data-parallel run (--set algorithm.name=dpsgd ...) returns no result.
    pngs = plot_runs({out.name: read_metrics(out)}, out)
    print(f"metrics: {out / METRICS}")
    for png in pngs:
        print(f"plot:    {png}")
    return 0
