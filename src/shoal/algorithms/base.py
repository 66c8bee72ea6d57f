"""The Algorithm protocol: a handful of per-worker functions, pure but for one licence:
``upload`` may compute its message in place in the trained rows ``y_WD``, the runtime's
scratch copy that nothing reads afterwards (a fresh ``[W, D]`` buffer per chunk cost 5-9% of a
1,000-client MLP round).

A federated round, as the runtime drives it::

    down = alg.download(x_D, server)                      # broadcast to the sampled clients
    for each local step:  y_WD -= lr * (g_WD + alg.correction(y_WD, down, client_W))
    msg_W, client_W = alg.upload(y_WD, down, client_W, steps_W1)
    mean_msg = aggregator(msg over the sampled clients, weights)
    x_D, server = alg.server_update(x_D, server, mean_msg, num_sampled, num_clients, weight_share)

``num_sampled`` clients of ``num_clients`` reported; ``weight_share`` is their part of the whole
population's aggregation weight, ``sum_S w_k / sum_all w_k`` (``num_sampled / num_clients``
under uniform weights), what SCAFFOLD's server needs to keep ``c`` the weighted mean of the
``c_k``.

Per-worker tensors carry a leading ``W`` axis; ``down`` and server state do not, so the same
code broadcasts whether the runtime trains one client at a time or thousands at once.

Under a lossy uplink compressor the server receives ``decompress(C(msg))``; an algorithm whose
client state must agree with the server's (SCAFFOLD's ``c_k``) names it in an optional
``tracks = {message key: client-state key}``, see :mod:`shoal.runtime.transmit`. Message keys
that are per-client numbers rather than model-sized vectors (FedNova's ``tau``) are named in
an optional ``statistics``: they travel uncompressed and attacks leave them alone, whatever
the model's size (by shape alone, a ``[W, 1]`` entry is model-sized for a one-parameter model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from shoal.checks import is_integer, is_real
from shoal.types import ClientState, Message, ServerState


@dataclass(frozen=True)
class LocalWork:
    """How much local training a client does in one round.

    ``epochs`` passes over the client's data in minibatches of ``batch_size`` (``None``:
    the whole local dataset as one batch), or exactly ``steps`` minibatch steps when given
    (passes over the data one after another, each ending in its short batch when
    ``batch_size`` does not divide the client's size: that batch is one step too).
    ``min_epochs`` draws each client's epochs uniformly from ``[min_epochs, epochs]`` every
    round (FedNova's heterogeneous local work).
    """

    epochs: int = 1
    batch_size: int | None = 10
    steps: int | None = None
    min_epochs: int | None = None

    def __post_init__(self) -> None:
        # Counts must be integers: a float epochs was truncated silently (epochs=2.7 ran 2)
        # and a float batch_size or steps failed inside the first round with a TypeError.
        for name in ("epochs", "batch_size", "steps", "min_epochs"):
            value = getattr(self, name)
            if value is not None and not is_integer(value):
                raise ValueError(f"LocalWork.{name} must be an integer, got {value!r}")
        if self.epochs < 1:
            raise ValueError(f"local epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(
                f"batch_size must be >= 1 (or None for full batch), got {self.batch_size}"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"local steps must be >= 1, got {self.steps}")
        if self.steps is not None and self.epochs != 1:
            raise ValueError(
                f"LocalWork: steps={self.steps} replaces epochs, so epochs={self.epochs} would "
                "be ignored; leave epochs at 1"
            )
        if self.min_epochs is not None and not 1 <= self.min_epochs <= self.epochs:
            raise ValueError(
                f"min_epochs must be in [1, epochs={self.epochs}], got {self.min_epochs}"
            )


@runtime_checkable
class Algorithm(Protocol):
    """A federated / distributed optimization method as pure functions (see module docstring)."""

    @property
    def name(self) -> str:
        """Short name for progress bars and summaries."""
        ...

    @property
    def lr(self) -> float:
        """Local (client) learning rate of the SGD steps the runtime takes."""
        ...

    def server_init(self, params_D: torch.Tensor) -> ServerState: ...

    def client_init(self, params_D: torch.Tensor) -> ClientState: ...

    def download(self, params_D: torch.Tensor, server: ServerState) -> Message:
        """What the server broadcasts (charged as downlink bytes); must hold ``"params"``."""
        ...

    def correction(
        self, params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        """A term added to the local gradient (FedProx's proximal pull, SCAFFOLD's drift
        correction), evaluated at the current local parameters; ``None`` for plain SGD.

        The local step is ``params -= lr * (grad + correction)``. Keeping the gradient out of
        this function lets the runtime apply it block by block without assembling it flat.
        """
        ...

    def upload(
        self, params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        """After local training: the message each client sends and its new state.
        ``params_WD`` is the runtime's scratch copy of the trained rows, read by nobody after
        this call: the message may be computed in place in it."""
        ...

    def server_update(
        self,
        params_D: torch.Tensor,
        server: ServerState,
        mean_msg: Message,
        num_sampled: int,
        num_clients: int,
        weight_share: float,
    ) -> tuple[torch.Tensor, ServerState]: ...


class StatelessClient:
    """Mixin-free helpers for the common case (no client state, plain SGD direction)."""

    @staticmethod
    def client_init(params_D: torch.Tensor) -> ClientState:
        return {}

    @staticmethod
    def server_init(params_D: torch.Tensor) -> ServerState:
        return {}

    @staticmethod
    def download(params_D: torch.Tensor, server: ServerState) -> Message:
        return {"params": params_D}

    @staticmethod
    def correction(
        params_WD: torch.Tensor, down: Message, client: ClientState
    ) -> torch.Tensor | None:
        return None

    @staticmethod
    def upload(
        params_WD: torch.Tensor, down: Message, client: ClientState, steps_W1: torch.Tensor
    ) -> tuple[Message, ClientState]:
        # In place: the trained rows are scratch (see Algorithm.upload), and a fresh [W, D]
        # buffer per chunk costs an extra pass over memory that no cache holds.
        return {"delta": params_WD.sub_(down["params"])}, client


def apply_mean_delta(
    params_D: torch.Tensor,
    server: ServerState,
    mean_msg: Message,
    num_sampled: int,
    num_clients: int,
    weight_share: float,
) -> tuple[torch.Tensor, ServerState]:
    """FedAvg's server step, an ``Algorithm.server_update``: add the aggregated client delta."""
    return params_D + mean_msg["delta"], server


def check_lr(name: str, value: float) -> None:
    """Learning rates and similar step sizes must be finite and positive."""
    if not (is_real(value) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
