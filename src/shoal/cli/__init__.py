"""The ``shoal`` command line: ``run``, ``launch``, ``plot``, ``data list|fetch|show``, ``demo``,
``robustness`` and ``probe``.

Mistakes a user can make (a config key, a value, a missing folder) end in one line on stderr
naming what was wrong and what is allowed, with exit code 2; failures the library reports
(diverging training, a failed download) end in one line with exit code 1. ``SHOAL_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from shoal.config import Config, ConfigError, load, resolve_overridden

__all__ = ["UsageError", "add_set_option", "main"]


ERROR = "shoal: error:"
"""How every command's one-line error starts (``shoal launch`` recognises its workers' by it)."""
CONFIG_ERROR_EXIT = 2
"""The exit code of a usage or config mistake (``shoal launch`` tells a refused config by it)."""
PEER_FAILURE_EXIT = 69
"""The exit code of a worker whose collective broke because another worker died, raised or
stalled (sysexits' EX_UNAVAILABLE): ``shoal launch`` then blames the other one."""
WARNING = "shoal: warning:"
"""How a library warning's line starts (``shoal launch`` shows each worker's once)."""


class UsageError(Exception):
    """A wrong command-line argument (exit code 2, like a config mistake)."""


def folder_arg(text: str, option: str = "--out") -> Path:
    """A folder the command will write into: not empty text (which would mean the current
    directory, e.g. from an unset shell variable) and not an existing file."""
    if not text.strip():
        raise UsageError(f"{option}: an empty path; name a folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {text}: a file, not a folder")
    above = next((p for p in path.parents if p.exists()), Path("."))
    if not above.is_dir():  # "[Errno 20] Not a directory" when the run made it, exit code 1
        raise UsageError(f"{option} {text}: {above} is a file, not a folder")
    return path


def file_arg(text: str, option: str) -> Path:
    """A file the command will write at its end: checked first, so that a long measurement is
    not lost to a typo in the path."""
    path = Path(text)
    if text.strip() and path.is_dir():  # "no such folder?" said the opposite of the mistake
        raise UsageError(f"{option} {text}: a folder, not a file; name a file in it")
    if not text.strip() or not path.parent.is_dir():
        raise UsageError(f"{option} {text}: cannot write a file there (no such folder?)")
    if not os.access(path if path.exists() else path.parent, os.W_OK):  # a read-only mount too
        raise UsageError(f"{option} {text}: not writable")
    return path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set partition.alpha=0.1 (repeatable)",
    )
    p.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="KEY",
        help="drop a key the config sets, before --set (repeatable): e.g. "
        "--set compression.name=qsgd --unset compression.ratio",
    )


def config_from_args(args: argparse.Namespace, raw: Any = None, source: str = "") -> Config:
    """The resolved :class:`shoal.config.Config` of ``args.config`` (or of ``raw``, read from
    ``source``) with the command line's ``--unset`` and ``--set`` applied."""
    from shoal.cli.registry import CATALOG

    if raw is None:
        raw, source = load(args.config), str(args.config)
    return resolve_overridden(raw, args.set, args.unset, CATALOG, source)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shoal")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from shoal.cli import data, launch, plot, probe, robustness, run

    parser = _Parser(
        prog="shoal",
        description="Federated and distributed training: run experiments from TOML configs.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run.add_parsers(sub)
    launch.add_parser(sub)
    plot.add_parser(sub)
    data.add_parser(sub)
    robustness.add_parser(sub)
    probe.add_parser(sub)
    name_choices(sub)
    return parser


def name_choices(sub: Any) -> None:
    """Name a missing subcommand by its choices, not by argparse's ``dest``."""
    sub.metavar = "{" + ",".join(sub.choices) + "}"


def say(line: str) -> None:
    """One line to stderr in one write. ``print`` writes the text and its newline separately,
    so the processes of a launched job, which share the launcher's pipe, glued their lines
    together and the launcher could not tell that they said the same thing."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
    """Library warnings as one line for people, without the source line."""
    say(f"{WARNING} {' '.join(str(message).split())}")


def _worker_rank() -> str:
    """``rank R: `` in a worker of a job of several processes (the launcher shows every
    worker's line, and "client 7 failed" did not say whose), else nothing. Config errors
    go without it: each worker says the same, and the launcher shows that line once."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK"):
        return f"rank {os.environ['RANK']}: "
    return ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised where the command is, so that a run ends
    as on Ctrl-C: its files whole, no temporary file left, the command that continues it
    printed. Before, the process died at once, silently."""


def _raise_terminated(signum: int, frame: Any) -> None:
    from shoal.files import stop_when_written  # not before a command has imported torch

    stop_when_written(Terminated())


def _raise_interrupted(signum: int, frame: Any) -> None:
    """Ctrl-C: ``KeyboardInterrupt`` as Python raises it, but after a checkpoint write that it
    would cut short (inside ``torch.save`` it ended the run with the zip writer's
    RuntimeError, exit 1, 2 of 6 times on a run that saves a large checkpoint each round)."""
    from shoal.files import stop_when_written

    stop_when_written(KeyboardInterrupt())


def _catch_signals() -> None:
    """Turn SIGTERM into :class:`Terminated`, and hold Ctrl-C back during file writes, in a
    command of its own; a worker of a job keeps the defaults (``torchrun`` stops the workers
    with SIGTERM, and the launcher reads a death by that signal as "stopped by the agent", not
    as the cause of a failure)."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not distributed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
            signal.signal(signal.SIGINT, _raise_interrupted)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage or config error,
    130 interrupted, 143 terminated)."""
    debug = bool(os.environ.get("SHOAL_DEBUG"))
    if argv is None:  # the program itself, not a caller's process
        _catch_signals()
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            args = build_parser().parse_args(argv)
            if argv is None:  # the program itself (a caller passing argv keeps its own gc)
                # The command's modules (torch's among them) are imported by now and live until
                # the process exits: move them out of the cyclic collector's way. Every full
                # collection and the shutdown then skip them (exit after `import torch`: 0.5 s
                # -> 0.15 s). Objects freed by reference counting are unaffected.
                gc.freeze()
            return int(args.func(args) or 0)
    except (ConfigError, UsageError) as e:
        if debug:
            raise
        say(f"{ERROR} {_one_line(e)}")
        return CONFIG_ERROR_EXIT
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 141
    except (ValueError, OSError, FloatingPointError) as e:
        # The library's own messages say what went wrong and what to do about it.
        if debug:
            raise
        from shoal.runtime.procgroup import PeerFailure  # torch is loaded by now

        if isinstance(e, PeerFailure):  # it names its rank already
            say(f"{ERROR} {_one_line(e)}")
            return PEER_FAILURE_EXIT
        say(f"{ERROR} {_worker_rank()}{_one_line(e)}")
        return 1
    except Terminated:
        say("shoal: terminated")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        say("shoal: interrupted")
        return 130
