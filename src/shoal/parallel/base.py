"""The protocol of a data-parallel / decentralized algorithm, and helpers they share.

Every worker holds its own model copy and data shard and trains step by step. The loop
(:func:`shoal.parallel.train_parallel`) calls, for ``step = 0, 1, ...``::

    state = alg.init(params_WD, comm)                       # once
    params_WD, state = alg.step(params_WD, grad_fn, state, comm, step)

``params_WD`` stacks the models of the workers this process holds: all of them in simulation
(:class:`~shoal.parallel.SimComm`), this process's one worker in distributed mode
(:class:`~shoal.parallel.DistComm`), so the same algorithm code runs in both.

``grad_fn(at_WD) -> grads_WD`` computes each local worker's minibatch gradient *at the given
parameters* on this step's minibatch (the loop draws it before the call; calling twice gives
the same batch). A closure rather than a precomputed gradient, because several methods do not
differentiate at ``params_WD``: Stochastic Gradient Push at the de-biased ``z = x / w``,
EAMSGD at the Nesterov look-ahead ``x + delta v``. After a call ``grad_fn.loss_W`` holds the
workers' minibatch losses.

``grad_fn(at_WD, buckets=Buckets(...))`` computes the same gradients and also hands them over
in buckets *during* the backward pass: ``buckets.ready(grads_WD, lo, hi)`` is called as soon as
``grads_WD[:, lo:hi]`` are final (synchronous SGD starts its all-reduce there, overlapping it
with the rest of the backward pass, as PyTorch DDP does).

All communication goes through ``comm`` (:class:`~shoal.parallel.Comm`); ``state`` is a dict
of tensors with a leading ``W`` axis where they are per worker (momentum buffers, push-sum
weights), plus whatever else the method keeps (compressor states, a message in flight).

Algorithms also say which model is evaluated: ``model(params_WD, state)`` is either
``[W, D]``, each worker's model (e.g. SGP's de-biased ``z``), whose average over all processes
the loop scores (one collective in distributed runs), or ``[D]``, one model that every worker
of every process holds (EASGD's centre, synchronous SGD's replicas), scored as it is. So
simulation and distributed runs report the same numbers; a method that is
:class:`HonestSubset` (robust gossip under attack) has the average, and the training loss, take
its honest workers only.

Shape suffixes: ``W`` local workers, ``N`` all workers, ``D`` flat parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from shoal.checks import check_count, is_real

if TYPE_CHECKING:
    from shoal.parallel.comm import Comm

State = dict[str, Any]
"""An algorithm's state: tensors (``[W, ...]`` when per worker) and small Python values."""


@dataclass(frozen=True)
class Buckets:
    """Hand a gradient over in buckets while the backward pass runs.

    PyTorch DDP's gradient bucketing (Li et al., "PyTorch Distributed: Experiences on
    Accelerating Data Parallel Training", VLDB 2020, Sec. 3.2.3): parameter tensors are taken
    in reverse order (the order the backward pass finishes them) and a bucket is closed once it
    holds ``cap_bytes`` of gradient (the first one at ``first_cap_bytes``, so communication
    starts early); as soon as every gradient of a bucket is final, ``ready(grads_WD, lo, hi)``
    is called with the output buffer and the bucket's range ``[lo, hi)`` of flat parameters
    (a bucket is consecutive parameter tensors, so one range). The buckets depend only on the
    parameter shapes, so every worker of every process gets the same ones, in the same order.
    """

    ready: Callable[[torch.Tensor, int, int], None]
    cap_bytes: int
    first_cap_bytes: int


class GradFn(Protocol):
    """``grad_fn(at_WD) -> grads_WD`` on this step's minibatches (see the module docstring)."""

    loss_W: torch.Tensor | None

    def __call__(self, at_WD: torch.Tensor, buckets: Buckets | None = None) -> torch.Tensor: ...


def bucket_ranges(
    numels: Sequence[int],
    offsets: Sequence[int],
    cap_bytes: int,
    first_cap_bytes: int,
    element_size: int = 4,
) -> list[tuple[int, int]]:
    """:class:`Buckets`' ranges ``[lo, hi)`` of flat parameters, in the order they are handed
    over, for parameter tensors of ``numels`` entries at ``offsets``, ``element_size`` bytes
    each (4 for float32, 8 for a float64 model: DDP's caps are in bytes, not entries)."""
    ranges: list[tuple[int, int]] = []
    cap, end = first_cap_bytes, None  # the end of the bucket being filled (None: none open)
    for n, off in zip(reversed(numels), reversed(offsets)):
        end = off + n if end is None else end
        if (end - off) * element_size >= cap:
            ranges.append((off, end))
            cap, end = cap_bytes, None
    if end is not None:
        ranges.append((offsets[0], end))
    return ranges


@runtime_checkable
class ParallelAlgorithm(Protocol):
    """A data-parallel or decentralized training method (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State: ...

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]: ...

    def model(self, params_WD: torch.Tensor, state: State) -> torch.Tensor:
        """The model(s) to evaluate: ``[W, D]`` per worker, or ``[D]`` held by all."""
        ...


@runtime_checkable
class HonestSubset(Protocol):
    """A method whose metrics (the average model, the training loss) take only some workers:
    the honest nodes, when Byzantine nodes train too."""

    def evaluated_W(self, state: State) -> torch.Tensor:
        """Which local workers the metrics take (a boolean ``[W]``, fixed for the run)."""
        ...


@runtime_checkable
class ServerAlgorithm(ParallelAlgorithm, Protocol):
    """A method that, in distributed runs, puts a parameter server on one rank (asynchronous
    EASGD): the loop runs ``serve`` there and ``finish`` on the workers after their steps."""

    def server_rank(self, comm: Comm) -> int | None:
        """The server's rank with this ``comm``, or ``None`` when it runs without one."""
        ...

    def serve(
        self, centre_D: torch.Tensor, comm: Comm, on_exchange: Callable[..., bool]
    ) -> torch.Tensor:
        """Serve the workers until all are done; returns the final centre."""
        ...

    def finish(
        self, params_WD: torch.Tensor, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        """Worker side: sign off; returns the final centre ``[1, D]`` and the worker's state
        after the sign-off (what a resumed run continues from)."""
        ...


class OwnModel:
    """The common case: each worker's parameters are its model."""

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        return params_WD


def check_positive(name: str, value: float) -> None:
    """Learning rates and similar step sizes must be finite and positive."""
    # is_real: a numpy float is a number (it was refused), True is not (it was lr = 1).
    if not (is_real(value) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """A coefficient in ``[0, 1)``: momentum."""
    if not (is_real(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_period(name: str, value: int) -> None:
    """A number of steps between communications (local SGD's H, EASGD's tau)."""
    check_count(value, name)


def sgd_direction(
    grads_WD: torch.Tensor,
    params_WD: torch.Tensor,
    momentum_WD: torch.Tensor | None,
    *,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step direction of ``torch.optim.SGD`` (dampening 0) and the new momentum buffer.

    ``d = g + wd x``; ``m <- mu m + d``; direction ``d + mu m`` (Nesterov) or ``m``. The first
    step sets ``m = d``, as PyTorch does; a zero buffer gives the same numbers.
    """
    d_WD = grads_WD + weight_decay * params_WD if weight_decay else grads_WD
    if not momentum:
        return d_WD, momentum_WD
    assert momentum_WD is not None
    m_WD = momentum * momentum_WD + d_WD
    return (d_WD + momentum * m_WD if nesterov else m_WD), m_WD


def resolve(value: Any) -> Any:
    """A message in flight (anything with ``wait()``) becomes what it delivers."""
    return value.wait() if hasattr(value, "wait") else value


def settle(state: State) -> State:
    """The state with every message in flight received: what a checkpoint can hold."""
    return {k: resolve(v) for k, v in state.items()}
