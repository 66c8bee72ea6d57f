"""EASGD and EAMSGD: elastic averaging SGD.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD", NeurIPS 2015. Workers
explore on their own and are pulled towards a centre variable ``x~`` by an elastic force of
moving rate ``alpha = lr * rho``; every ``tau`` steps (steps ``0, tau, 2 tau, ...``)::

    d_i = alpha (x_i - x~)                      (from the values before this step)
    x_i <- local_step(x_i) - d_i                x~ <- x~ + sum_i d_i

with ``local_step`` plain SGD (EASGD) or Nesterov momentum ``delta`` (EAMSGD, the paper's
Algorithm 2): ``v <- delta v - lr g(x + delta v)``, ``x <- x + v``. With ``tau = 1`` and no
momentum this is the paper's synchronous EASGD, ``x_i <- x_i - lr g_i - alpha (x_i - x~)``.
The default ``alpha`` is ``beta / p`` with ``beta = 0.9`` and ``p`` workers (the paper's and
``mlaunch.lua``'s choice). The synchronous form refuses ``alpha >= 2 / (p + 1)``: every exchange
multiplies the gap between the workers' mean and the centre by ``1 - (p + 1) alpha``, so it
would never close (the centre diverges even without gradients).

Two forms:

- synchronous (``mode="sync"``, and the default on :class:`~shoal.parallel.SimComm`): every
  worker holds the centre, updated with an all-reduce of the ``d_i``;
- asynchronous (``mode="async"``, the default on a :class:`~shoal.parallel.DistComm` of two
  or more ranks): the lock-free parameter-server form of DeepSpark (:mod:`.deepspark`), the
  centre on the last rank, the other ranks workers exchanging with it every ``tau`` steps
  with no barrier.

The evaluated model is the centre (in the asynchronous form: as the worker last saw it; the
loop's server rank evaluates the real one).

Shape suffixes: ``W`` local workers, ``D`` flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from shoal.checks import is_real
from shoal.parallel.algorithms import deepspark
from shoal.parallel.base import GradFn, State, check_fraction, check_period, check_positive
from shoal.parallel.comm import Comm, DistComm

MODES = ("auto", "sync", "async")


@dataclass(frozen=True)
class EASGD:
    """Elastic averaging SGD (``momentum > 0``: EAMSGD); see the module docstring."""

    lr: float
    tau: int = 1
    alpha: float | None = None
    momentum: float = 0.0
    mode: Literal["auto", "sync", "async"] = "auto"
    name: str = "easgd"

    def __post_init__(self) -> None:
        check_positive(f"{self.name}: lr", self.lr)
        check_period(f"{self.name}: tau (the communication period)", self.tau)
        if self.alpha is not None and not (
            is_real(self.alpha) and 0 < self.alpha < 1  # a numpy float too
        ):
            raise ValueError(f"{self.name}: alpha must be in (0, 1), got {self.alpha!r}")
        check_fraction(f"{self.name}: momentum", self.momentum)
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {self.mode!r}")

    def asynchronous(self, comm: Comm) -> bool:
        if self.mode == "async" and not (isinstance(comm, DistComm) and comm.world_size >= 2):
            raise ValueError(
                f"{self.name}: the asynchronous form needs a DistComm with >= 2 ranks "
                "(workers and the parameter server on the last rank)"
            )
        auto = self.mode == "auto" and isinstance(comm, DistComm) and comm.world_size >= 2
        return self.mode == "async" or auto

    def server_rank(self, comm: Comm) -> int | None:
        """The rank that holds the centre in the asynchronous form (the last), else None."""
        return comm.world_size - 1 if self.asynchronous(comm) else None

    def num_workers(self, comm: Comm) -> int:
        return comm.world_size - 1 if self.asynchronous(comm) else comm.world_size

    def moving_rate(self, comm: Comm) -> float:
        return self.alpha if self.alpha is not None else 0.9 / self.num_workers(comm)

    def check_stable(self, comm: Comm) -> None:
        """Refuse a synchronous moving rate that diverges on ``comm``'s workers."""
        # The gap e = mean_i(x_i) - x~ becomes (1 - (p + 1) alpha) e at every exchange.
        p, alpha = comm.world_size, self.moving_rate(comm)
        if (p + 1) * alpha >= 2:
            raise ValueError(
                f"{self.name}: alpha={alpha} on {p} workers diverges: every exchange "
                f"multiplies the gap between the workers' mean and the centre by "
                f"1 - (p + 1) alpha = {1 - (p + 1) * alpha:.3g}; use alpha < 2 / (p + 1) = "
                f"{2 / (p + 1):.3g} (the default is 0.9 / p)"
            )

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        if self.asynchronous(comm):
            assert isinstance(comm, DistComm)
            if comm.rank == self.server_rank(comm):
                raise ValueError(f"{self.name}: rank {comm.rank} is the server; it runs serve()")
        else:
            self.check_stable(comm)
        state: State = {"centre_1D": params_WD[:1].clone()}  # every worker starts from it
        if self.momentum:
            state["velocity_WD"] = torch.zeros_like(params_WD)
        if self.asynchronous(comm):
            state.update(loss_sum=0.0, loss_steps=0, stop=False)
        return state

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        return state["centre_1D"][0]  # the same on every process

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        state = dict(state)
        alpha = self.moving_rate(comm)
        asynchronous = self.asynchronous(comm)
        communicate = step % self.tau == 0
        d_WD = None
        if communicate:
            centre_1D = state["centre_1D"]
            if asynchronous:
                assert isinstance(comm, DistComm)
                head = deepspark.header(
                    deepspark.EXCHANGE, step, state["loss_sum"], state["loss_steps"], params_WD
                )
                centre_D, stop = deepspark.exchange(comm, params_WD[0], head)
                centre_1D = centre_D.unsqueeze(0)
                state.update(loss_sum=0.0, loss_steps=0, stop=stop)
            d_WD = alpha * (params_WD - centre_1D)
            if asynchronous:  # the centre as the server has it right after this exchange
                state["centre_1D"] = centre_1D + d_WD
            else:
                state["centre_1D"] = centre_1D + comm.all_reduce_mean(d_WD)[:1] * comm.world_size
        if self.momentum:
            v_WD = state["velocity_WD"]
            v_WD = self.momentum * v_WD - self.lr * grad_fn(params_WD + self.momentum * v_WD)
            state["velocity_WD"] = v_WD
            new_WD = params_WD + v_WD
        else:
            new_WD = params_WD - self.lr * grad_fn(params_WD)
        if asynchronous and grad_fn.loss_W is not None:
            state["loss_sum"] += float(grad_fn.loss_W.sum())
            state["loss_steps"] += 1
        return (new_WD - d_WD if d_WD is not None else new_WD), state

    # ---- the asynchronous form's server and shutdown -------------------------------------

    def serve(
        self, centre_D: torch.Tensor, comm: Comm, on_exchange: deepspark.OnExchange
    ) -> torch.Tensor:
        """Run the centre on the server rank until every worker is done (see deepspark)."""
        if not isinstance(comm, DistComm):
            raise ValueError(f"{self.name}: the parameter server runs on a DistComm")
        return deepspark.serve(centre_D, self.moving_rate(comm), comm, on_exchange)

    def finish(
        self, params_WD: torch.Tensor, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        """Worker side, asynchronous form: sign off, reporting the losses of the steps since
        the last exchange; returns the final centre ``[1, D]`` and the state after it, with
        nothing left to report (a resumed run must not report those losses again)."""
        assert isinstance(comm, DistComm)
        head = deepspark.header(
            deepspark.DONE, step, state["loss_sum"], state["loss_steps"], params_WD
        )
        centre_1D = deepspark.finish(comm, head, state["centre_1D"][0]).unsqueeze(0)
        return centre_1D, {**state, "centre_1D": centre_1D, "loss_sum": 0.0, "loss_steps": 0}


def easgd(
    lr: float,
    tau: int = 1,
    alpha: float | None = None,
    *,
    mode: Literal["auto", "sync", "async"] = "auto",
) -> EASGD:
    """EASGD with moving rate ``alpha`` (default ``0.9 / p``) every ``tau`` steps."""
    return EASGD(lr, tau, alpha, 0.0, mode, "easgd")


def eamsgd(
    lr: float,
    tau: int = 1,
    alpha: float | None = None,
    momentum: float = 0.99,
    *,
    mode: Literal["auto", "sync", "async"] = "auto",
) -> EASGD:
    """EAMSGD: EASGD whose local steps use Nesterov momentum ``delta = momentum``."""
    return EASGD(lr, tau, alpha, momentum, mode, "eamsgd")
