"""Deep Gradient Compression on data-parallel workers (Lin, Han, Mao, Wang, Dally, ICLR 2018).

The update rule is :class:`shoal.algorithms.DGC`'s (its module docstring has the paper's
equations, the warm-up schedules and the named deviations): every worker clips its minibatch
gradient to ``clip_norm / sqrt(N)`` (optional), adds it to its momentum ``u`` and its
accumulation ``v`` (momentum correction), and sends the entries of ``v`` above DGC's sampled
threshold in every weight tensor (density ``rho_t`` under the sparsity warm-up), with the
biases and other 1-D tensors dense as ``u``; the sent entries of ``v`` and, with momentum factor
masking, of ``u`` are zeroed. Here the messages travel as they would between DGC's workers:
each worker's message, encoded as (value, index) pairs per weight tensor
(:attr:`shoal.algorithms.DGC.default_compressor`, so the bytes are DGC's own), is all-gathered,
and every worker applies ``x <- x - lr * mean_i(send_i)``, so the replicas stay identical
(the momentum is already in the messages). The warm-up's clock is the loop's step.

:class:`shoal.algorithms.DGC` runs the same rule in the federated loop (every client sampled
every round, one local step); this form runs on :class:`~shoal.parallel.SimComm` and on real
processes (:class:`~shoal.parallel.DistComm`), with ``sim_seconds`` charged as an all-gather of
the encoded messages, and is what ``[algorithm] name = "dgc"`` runs from a config.

Shape suffixes: ``W`` local workers, ``N`` all workers, ``D`` flat parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shoal.algorithms.dgc import (
    DGC,
    Warmup,
    check_clip_norm,
    check_warmup_length,
    clip_locally,
    required_shapes,
)
from shoal.compress.base import decompress_sum
from shoal.parallel.base import GradFn, State
from shoal.parallel.comm import Comm


@dataclass(frozen=True)
class ParallelDGC:
    """DGC's ``rule`` (its ``lr``, density, momentum, warm-up, sampling; no clipping there)
    and the clipping threshold ``clip_norm`` (``None``: none), whose ``N`` is the job's."""

    rule: DGC
    clip_norm: float | None = None
    name: str = "dgc"

    def __post_init__(self) -> None:
        if self.clip_norm is not None:
            check_clip_norm(self.clip_norm)

    @staticmethod
    def model(params_WD: torch.Tensor, state: State) -> torch.Tensor:
        """One replica: every worker applies the same mean message to the same start."""
        return params_WD[0]

    def init(self, params_WD: torch.Tensor, comm: Comm) -> State:
        self.rule.check_size(params_WD.shape[-1])
        return {"u_WD": torch.zeros_like(params_WD), "v_WD": torch.zeros_like(params_WD)}

    def step(
        self, params_WD: torch.Tensor, grad_fn: GradFn, state: State, comm: Comm, step: int
    ) -> tuple[torch.Tensor, State]:
        g_WD = grad_fn(params_WD)
        if self.clip_norm is not None:
            g_WD = clip_locally(g_WD, self.clip_norm, comm.world_size)
        steps = [step] * len(params_WD)
        send_WD, u_WD, v_WD = self.rule.sparsify(g_WD, state["u_WD"], state["v_WD"], steps)
        encoding = self.rule.default_compressor
        payloads = [encoding.compress(row_D, encoding.init(row_D))[0] for row_D in send_WD]
        inbox = comm.all_gather_payloads(payloads, codec_elements=send_WD.shape[1])
        mean_D = decompress_sum(encoding, inbox, send_WD.dtype) / comm.world_size
        return params_WD - self.rule.lr * mean_D, {"u_WD": u_WD, "v_WD": v_WD}


def dgc(
    lr: float,
    shapes: Sequence[Sequence[int]] | None = None,
    density: float = 0.001,
    momentum: float = 0.9,
    momentum_masking: bool = True,
    clip_norm: float = 0.0,
    sample_ratio: float = 0.01,
    warmup_epochs: int = 4,
    epoch_steps: int | None = None,
    warmup: Warmup = "paper",
    seed: int = 0,
) -> ParallelDGC:
    """Data-parallel DGC with learning rate ``lr`` on a model whose ``ParamSpec.shapes`` are
    ``shapes``; the defaults are :func:`shoal.algorithms.dgc`'s (the reference's config).

    ``clip_norm = 0``: no local clipping. The warm-up counts epochs, so below density 1 it
    needs ``epoch_steps``, the steps of one (a worker's shard over the batch size, rounded up;
    a config fills it in); ``warmup_epochs = 0`` or ``epoch_steps = 0`` runs without it.
    """
    rule = DGC(
        lr,
        required_shapes(shapes),
        density=density,
        momentum=momentum,
        batch_size=None,  # the loop's parallel batch size is what a step trains on
        momentum_masking=momentum_masking,
        sample_ratio=sample_ratio,
        warmup_epochs=warmup_epochs,
        epoch_steps=epoch_steps or 0,
        warmup=warmup,
        seed=seed,
    )
    return ParallelDGC(check_warmup_length(rule, epoch_steps), clip_norm or None)
