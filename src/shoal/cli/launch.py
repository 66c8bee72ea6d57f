"""``shoal launch``: one config on several processes (and machines), through ``torchrun``.

``shoal launch --nproc-per-node 4 CONFIG.toml`` starts ``torchrun`` with ``shoal run`` as
the worker; each worker sees torchrun's ``RANK``/``WORLD_SIZE`` and trains with
:class:`~shoal.runtime.dist.DistRuntime` (``[runtime] kind = "auto"``). The plain form
``torchrun --nproc-per-node 4 -m shoal run CONFIG.toml --out DIR`` is the same job.

Failures: with ``--max-restarts K`` torchrun's elastic agent restarts every worker after one
dies, and the restarted workers resume from the run's checkpoint; without restarts the agent
stops the survivors as soon as a worker exits, and this command ends with one line naming
the rank that died and its exit code.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from shoal.cli import (
    CONFIG_ERROR_EXIT,
    ERROR,
    PEER_FAILURE_EXIT,
    WARNING,
    UsageError,
    add_set_option,
    config_from_args,
)
from shoal.runtime.spawn import free_port

# torchrun's failure report: one entry per failed worker, its global rank and exit code on
# lines of their own (the agent's log line "failed (exitcode: N) local_rank: L" is not one).
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_ROOT_CAUSE = "Root Cause (first observed failure)"
_AGENT_STOP = "-15"  # SIGTERM: the agent stopping the other workers once one has failed
_NOT_THE_CAUSE = (_AGENT_STOP, str(PEER_FAILURE_EXIT))
_AGENT_FAILED = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
# The agent's log lines as it sees a worker fail (it may first stop the others with SIGTERM):
# its failure report follows.
_WORKER_RANK = re.compile(rf"(?<=^{re.escape(ERROR)} )rank \d+: ")
_REPORT_START = re.compile(r"failed \(exitcode: -?\d+\)|Sending process \d+ closing signal")


class _AgentLog:
    """torchrun's stderr, passed through without the agent's own traceback.

    When a worker fails, the agent raises ``ChildFailedError`` and prints its Python traceback
    (a dozen lines inside torch) before the failure table that says which rank failed and how;
    only the table is news. Any other traceback passes through (``SHOAL_DEBUG=1``: all).

    Every worker refuses a bad config with the same one-line error, and warns of a setting
    with the same one-line warning: each such line is shown once, also when each worker's
    error starts with its own rank (``rank R: ...``: the first is shown). The
    agent's failure report is held until the job ends (:meth:`finish`), and dropped when the
    workers only refused the config: that line already says everything."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.held: list[str] = []
        self.said: set[str] = set()
        self.report: list[str] | None = None

    def write(self, line: str) -> None:
        if line.startswith((ERROR, WARNING)) and not self.verbose:
            # A worker's own error names its rank; the same error from every rank is shown once.
            key = _WORKER_RANK.sub("", line, count=1)
            if key in self.said:
                return
            self.said.add(key)
        if self.report is None and _REPORT_START.search(line):
            self.report = []
        if not self.held and (self.verbose or not line.startswith("Traceback (most recent")):
            self._emit([line])
            return
        self.held.append(line)
        if line.startswith(_AGENT_FAILED):
            self.held = []  # the agent's traceback: dropped
        elif not line.startswith((" ", "Traceback")):
            self.flush()  # an exception line that is not the agent's: the whole traceback

    def _emit(self, lines: list[str]) -> None:
        if self.report is not None and not lines[0].startswith(ERROR):
            self.report.extend(lines)
        else:
            sys.stderr.writelines(lines)

    def flush(self) -> None:
        if self.held:
            self._emit(self.held)
        self.held = []

    def finish(self, exit_codes: list[str]) -> bool:
        """Write out what is held; returns whether the workers only refused the config (the
        report is dropped then, unless verbose). A worker the agent stopped before it got to
        refuse (SIGTERM) does not make a refused config a failure."""
        self.flush()
        own = [code for code in exit_codes if code not in _NOT_THE_CAUSE]
        refused = bool(own) and all(code == str(CONFIG_ERROR_EXIT) for code in own)
        if self.report and (self.verbose or not refused):
            sys.stderr.writelines(self.report)
        self.report = None
        return refused


class _Failures:
    """The failed workers of torchrun's report, as ``(rank, exit code)``, and which of them
    the agent observed first (its "Root Cause")."""

    def __init__(self) -> None:
        self.entries: list[tuple[str | None, str | None]] = []
        self.root: int | None = None

    @property
    def codes(self) -> list[str]:
        return [code for _, code in self.entries if code is not None]

    def read(self, line: str) -> None:
        if _ROOT_CAUSE in line:
            self.root = len(self.entries)
        elif m := _FAILED_RANK.search(line):
            self.entries.append((m.group(1), None))
        elif (m := _EXIT_CODE.search(line)) and self.entries and self.entries[-1][1] is None:
            self.entries[-1] = (self.entries[-1][0], m.group(1))

    def cause(self) -> tuple[str | None, str | None]:
        """The worker to blame. A signal other than the agent's own SIGTERM first (a killed
        worker breaks its peers' collectives, and either may be observed first), then the
        failure the agent observed first, then any failure it did not cause itself: not a
        worker the agent stopped, nor one whose collective broke (``PEER_FAILURE_EXIT``), which
        is the survivor of another's failure; then one the agent stopped (a worker that
        stalled until its peers timed out), then any."""
        entries = self.entries
        signalled = [e for e in entries if e[1] and e[1].startswith("-") and e[1] != _AGENT_STOP]
        root = [entries[self.root]] if self.root is not None and self.root < len(entries) else []
        own = [e for e in root + entries if e[1] not in _NOT_THE_CAUSE]
        stopped = [e for e in entries if e[1] == _AGENT_STOP]
        return (signalled or own or stopped or entries or [(None, None)])[0]


def _nnodes(text: str) -> str:
    """torchrun's ``--nnodes``: ``N`` or ``MIN:MAX`` machines, each a whole number >= 1."""
    parts = text.split(":")
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        counts = []
    if len(parts) > 2 or not counts or min(counts) < 1 or counts != sorted(counts):
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX machines (>= 1), got {text!r}")
    return text


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "launch",
        help="run a config on several processes with torchrun (DistRuntime)",
        description="Run one experiment across processes and machines: a thin layer over "
        "torchrun whose workers are `shoal run` with the distributed runtime.",
    )
    p.add_argument("config", metavar="CONFIG.toml", help="the experiment config")
    add_set_option(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: runs/<config name>, or -2, -3, ... if taken)",
    )
    p.add_argument(
        "--nproc-per-node", type=int, default=2, help="processes on this machine (default 2)"
    )
    p.add_argument(
        "--nnodes", type=_nnodes, default="1", help="machines (or MIN:MAX for elastic jobs)"
    )
    p.add_argument("--node-rank", type=int, default=None, help="this machine's rank")
    p.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="rendezvous address on the first machine (needed with --nnodes > 1)",
    )
    p.add_argument("--rdzv-id", default="shoal", help="job id shared by all machines")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="restart all workers up to K times after a failure; they resume from the checkpoint",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_launch)


def torchrun_command(args: argparse.Namespace, out: Path) -> list[str]:
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.node_rank is not None and args.node_rank < 0:
        raise UsageError(f"--node-rank must be >= 0, got {args.node_rank}")
    multi = args.nnodes not in ("1", "1:1")
    if multi and not args.rdzv_endpoint:
        raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT of the first machine")
    endpoint = args.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={args.nproc_per_node}",
        f"--nnodes={args.nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={args.rdzv_id}",
        f"--max-restarts={args.max_restarts}",
        "--monitor-interval=0.5",
    ]
    if args.node_rank is not None:
        cmd.append(f"--node-rank={args.node_rank}")
    cmd += ["-m", "shoal", "run", str(args.config), "--out", str(out)]
    for key in args.unset:
        cmd += ["--unset", key]
    for item in args.set:
        cmd += ["--set", item]
    if args.quiet:
        cmd.append("--quiet")
    return cmd


def cmd_launch(args: argparse.Namespace) -> int:
    from shoal.cli.run import claimed_out, fresh_out

    # Check the config here, once, so a typo is one line rather than one per worker.
    config_from_args(args)
    stem = Path(args.config).stem
    if args.nnodes not in ("1", "1:1"):
        if not args.out:
            raise UsageError("--nnodes > 1 needs --out DIR (on a folder every machine can reach)")
        # Every machine's launcher names the one shared folder: a lock would refuse all but one.
        return _launch(args, fresh_out(args.out, stem))
    # One machine: the launcher holds the folder's lock while its workers write there, so a
    # second launch or a `shoal run --resume` of the folder is refused, as for `shoal run`.
    with claimed_out(args.out, stem) as out:
        return _launch(args, out)


def _launch(args: argparse.Namespace, out: Path) -> int:
    """Run torchrun's job into ``out``, passing its log through; the exit code to return."""
    cmd = torchrun_command(args, out)
    # torchrun sets 1 thread a worker when this is unset, with a banner saying so; the same
    # default, quietly (a config's num_threads still sets each worker's own).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
    failures = _Failures()
    assert proc.stderr is not None
    log = _AgentLog(verbose=bool(os.environ.get("SHOAL_DEBUG")))
    for line in proc.stderr:  # pass torchrun's log through, noting who failed
        log.write(line)
        failures.read(line)
    rc = proc.wait()
    if log.finish(failures.codes) and rc != 0:
        print(f"{ERROR} the workers refused the config (the error above)", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    if rc != 0:
        failed_rank, exit_code = failures.cause()
        who = f"rank {failed_rank}" if failed_rank is not None else "a worker"
        how = f" with exit code {exit_code}" if exit_code is not None else ""
        if exit_code == _AGENT_STOP and str(PEER_FAILURE_EXIT) in failures.codes:
            how = " to respond (its peers timed out waiting; the agent stopped it)"
        hint = "" if args.max_restarts else "; --max-restarts K restarts from the checkpoint"
        print(f"{ERROR} {who} failed{how}; the job stopped{hint}", file=sys.stderr)
        return 1
    return 0
