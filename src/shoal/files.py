"""Writing a run's files so that a kill at any moment leaves the old version or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def environment(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: ``device = "auto"`` and
    ``num_threads = 0`` are saved as given, and floats differ with the thread count (the 9th
    digit of a loss between 1 and 2 threads) and between machines: with the instruction set
    torch's CPU kernels use (``cpu_capability``), their sums' order changes, and with it a
    CPU run's last digits (W's dense accuracy, same code and seeds: 0.715 on an earlier
    session's machine, 0.716 on an AVX512 one)."""
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


class _Writes:
    """How deep this process is in writes that a stop must not cut short, and the stop that
    came meanwhile (see :func:`stop_when_written`)."""

    depth = 0
    stop: BaseException | None = None


def stop_when_written(stop: BaseException) -> None:
    """For a signal handler (SIGTERM's): raise ``stop`` now or, inside one of this module's
    writes, once it is done. Raised inside ``torch.save``, the zip writer's own cleanup
    failed, and the process ended with that error instead of the stop."""
    if _Writes.depth:
        _Writes.stop = stop
        return
    raise stop


@contextmanager
def _whole() -> Iterator[None]:
    _Writes.depth += 1
    try:
        yield
    finally:
        _Writes.depth -= 1
    if not _Writes.depth and _Writes.stop is not None:
        stop, _Writes.stop = _Writes.stop, None
        raise stop


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then renamed over ``path``; a
    save interrupted (Ctrl-C) removes its temporary file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with _whole():
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


LOCK = ".shoal.lock"
"""The file in a run folder that :func:`run_lock` locks."""


class FolderInUse(ValueError):
    """Another process holds the run folder's lock."""


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (created if need be) while this process writes a run there.

    Two runs writing into one folder (a sweep's ``&``, or a resume of a run still going)
    interleaved their metrics rows, mixed one run's config with the other's model, and one of
    them still ended with exit 0. An advisory ``flock``, which the system drops when the
    process ends however it ends: a killed run never leaves its folder locked. Where there is
    no ``fcntl`` (Windows) nothing guards the folder. Raises :class:`FolderInUse`."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise FolderInUse(
                f"{folder} is in use by another shoal process{by}: wait for it to end, or "
                "choose another folder"
            ) from None
        except OSError as e:  # a file system without flock (Lustre mounted without it, FUSE)
            warnings.warn(
                f"{folder}: cannot lock the run folder ({e.strerror}); nothing keeps a second "
                "run from writing into it",
                stacklevel=3,
            )
        else:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # and with it the lock


CHECKPOINT_KINDS = {
    "params": "a federated run's",
    "params_WD": "a data-parallel run's",
    "centre_D": "an asynchronous EASGD server's",
}
"""What each kind of checkpoint holds its parameters under, and what it is called."""


def load_checkpoint(path: Path, device: torch.device | str, holds: str) -> dict[str, Any]:
    """A run's checkpoint, loaded onto ``device``; it must hold ``holds`` (a key of
    :data:`CHECKPOINT_KINDS`). A file damaged after it was written (cut short, emptied,
    overwritten) is refused in one line: torch.load ended a resume with a traceback
    (``EOFError``, ``RuntimeError`` from its zip reader) or a stray message (from parsing the
    legacy format: "invalid literal for int()"). So is another kind of run's checkpoint (a
    config edited from federated to data-parallel): a ``KeyError`` before.

    Loaded weights-only, with the few state classes a run saves allowed by name: unpickling
    anything else could run code from a checkpoint handed over with a run folder (torch's own
    default since 2.6). A file that needs more is refused, naming what it holds."""
    try:
        with torch.serialization.safe_globals(_checkpoint_classes()):
            ck = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise _unreadable(path, e) from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise ValueError(
            f"cannot resume: {path} holds an object a checkpoint is not expected to hold "
            f"({found.group(1) if found else 'an unknown class'}), and loading it could run "
            "code; if you trust the file, load it with torch.load(..., weights_only=False)"
        ) from None
    except Exception as e:  # any failure to unpickle means the same: not a checkpoint
        raise _unreadable(path, e) from None
    if not isinstance(ck, dict):
        raise ValueError(f"cannot resume: {path} holds a {type(ck).__name__}, not a checkpoint")
    if holds not in ck:
        kind = next((v for k, v in CHECKPOINT_KINDS.items() if k in ck), None)
        what = f"is {kind} checkpoint" if kind else "is not a shoal checkpoint"
        raise ValueError(
            f"cannot resume: {path} {what}, not {CHECKPOINT_KINDS[holds]} (was the config's "
            "[algorithm] name changed?); resume it with the config it was written with"
        )
    return ck


def _checkpoint_classes() -> list[Any]:
    """What a checkpoint may hold besides tensors and plain Python values: numpy arrays and
    scalars (a downlink's holders, numpy floats among the metrics) and three state classes."""
    from shoal.aggregate.clipping import ClipState  # here: files.py is imported by them
    from shoal.parallel.graph import Neighbors
    from shoal.topology import Topology

    multiarray = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2, or 1
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    numpy_values = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]
    return [ClipState, Neighbors, Topology, *numpy_values]


def _unreadable(path: Path, e: Exception) -> ValueError:
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    return ValueError(
        f"cannot resume: {path} is not a readable checkpoint ({reason}); it was changed "
        "after the run wrote it (checkpoints are written whole, by rename): run again "
        "into another folder"
    )


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_suffix(".tmp")
    try:
        with _whole():
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except BaseException:  # interrupted: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    """Add a row (one JSON object) to a metrics file."""
    with _whole(), open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite a metrics file (one JSON object per line) in one rename."""
    replace_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def check_checkpoint_dtype(path: Path, saved: torch.Tensor, dtype: torch.dtype) -> None:
    """A checkpoint's parameters are in the dtype the model trains in: a run saved from a
    float32 model and resumed with a float64 one (or back) failed inside its first step."""
    if saved.dtype != dtype:
        raise ValueError(
            f"cannot resume: {path} holds {str(saved.dtype).removeprefix('torch.')} parameters, "
            f"but this model trains in {str(dtype).removeprefix('torch.')}; cast the model back"
        )


def warn_setup_differs(
    where: Path,
    saved: dict[str, Any],
    now: dict[str, Any],
    stacklevel: int,
    note: Callable[[list[str]], str] = lambda differ: "",
) -> list[str]:
    """Warn when a resume's setup differs from the one its checkpoint recorded (``saved``;
    keys it lacks, from an older checkpoint, are not compared), and return the keys that
    differ. It may be meant (a lower learning rate from here on), so it is no error. A repr
    that shows an object's address (an algorithm holding a function) differs between
    processes: not compared; numpy scalars compare as the numbers they are (``np.int64(2)``
    is ``2``). ``note(differ)`` ends the warning."""
    differ = [
        k
        for k, v in now.items()
        if k in saved and _plain(saved[k]) != _plain(v) and " at 0x" not in str(v)
    ]
    if differ:
        warnings.warn(
            f"resuming {where} with a setup unlike its checkpoint's ({', '.join(differ)} "
            f"differ): the run goes on from that state under the new setting{note(differ)}",
            stacklevel=stacklevel + 1,
        )
    return differ


def split_digest(parts: Sequence[Any]) -> str:
    """A digest of which samples each client (or worker) holds, in order, for a resume to
    compare: sizes alone missed a reseeded IID split, whose sizes never change."""
    h = hashlib.sha256()
    for idx in parts:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        h.update(np.int64(len(idx)).tobytes())
        h.update(idx.tobytes())
    return h.hexdigest()[:16]


_NUMPY_SCALAR = re.compile(r"np\.(?:u?int|float)\d*\(([^()]*)\)|np\.(True|False)_")


def _plain(value: Any) -> Any:
    """A recorded setting with numpy scalars' reprs as the plain numbers'."""
    if not isinstance(value, str):
        return value
    return _NUMPY_SCALAR.sub(lambda m: m.group(1) or m.group(2), value)
