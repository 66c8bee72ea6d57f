"""Run a command in its own session; time it and sample the memory of its process tree.

Wall time runs from just before launch to the exit of the launched process, seen as it
happens (a pidfd wakes the wait between samples), not at the next sample. Memory is sampled
every ``interval`` seconds from ``/proc`` over the launched process, its descendants and
anything else in its session (Ray's helpers), summing PSS (``smaps_rollup``) and RSS;
``ru_maxrss`` of the launched process itself comes from ``os.wait4``. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measured:
    returncode: int | None
    """None: killed at the timeout."""
    wall_s: float
    maxrss_mib: float
    """Peak RSS of the launched process alone (``ru_maxrss``)."""
    tree_pss_mib: float
    """Peak of the summed PSS of the process tree, as sampled."""
    tree_rss_mib: float
    """Peak of the summed RSS of the process tree, as sampled."""
    max_processes: int


def _stat(pid: int) -> tuple[int, int, int] | None:
    """``(ppid, session id, rss bytes)`` of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[3]), int(fields[21]) * _PAGE


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree(root: int) -> dict[int, int]:
    """``{pid: rss}`` of ``root``, its descendants, and the other members of its session."""
    info = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            info[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in info.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in info and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    found |= {pid for pid, (_, sid, _) in info.items() if sid == root}
    return {pid: info[pid][2] for pid in found}


def run(
    cmd: list[str], *, env: dict[str, str], log: Path, timeout: float, interval: float = 0.5
) -> Measured:
    """Run ``cmd`` (stdout and stderr to ``log``) and measure it; kill it after ``timeout`` s."""
    peak_pss = peak_rss = 0
    nproc = 0
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        pidfd = os.pidfd_open(proc.pid)  # readable once the process has exited
        status, usage = None, None
        while True:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                wall = time.perf_counter() - t0
                status, usage = st, ru
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, st, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                break
            procs = tree(proc.pid)
            nproc = max(nproc, len(procs))
            peak_rss = max(peak_rss, sum(procs.values()))
            peak_pss = max(peak_pss, sum(_pss(p) for p in procs))
            select.select([pidfd], [], [], interval)  # the interval, or until the exit
        os.close(pidfd)
        proc.returncode = 0  # reaped by wait4 above; keep Popen from waiting again
    cleanup(proc.pid)
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    return Measured(code, wall, usage.ru_maxrss / 1024, peak_pss / 2**20, peak_rss / 2**20, nproc)


def cleanup(session: int) -> None:
    """Kill, one by one, what is left of the session we started (helpers outliving it)."""
    for pid in tree(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
