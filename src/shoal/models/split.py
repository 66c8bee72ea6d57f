"""The body/head split that personalization builds on.

Shoal ships no personalized algorithm yet; the split is here so that one can name its shared
and private parameters without knowing the model. Personalized federated methods (FedPer,
Arivazhagan et al. 2019, arXiv:1912.00818; FedRep, Collins et al. 2021, ICML; LG-FedAvg, Liang
et al. 2020, arXiv:2001.01523) share a feature extractor (the *body*) and keep the final
classifier (the *head*) private, or the reverse.
Every model in :mod:`shoal.models` is a :class:`BodyHead`, so its parameter names start with
``body.`` or ``head.``; :func:`body_head_split` also gives a sensible split for any other module.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BodyHead", "body_head_split"]


class BodyHead(nn.Module):
    """``forward(x) = head(body(x))``; parameter names are prefixed ``body.`` and ``head.``."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def body_head_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters of the body and of the head of ``model``.

    Returns ``(body_names, head_names)``: a partition of the names that
    ``model.named_parameters()`` yields for parameters with ``requires_grad``, each list in that
    order.

    * If ``model`` has child modules named ``body`` and ``head`` (every model in
      :mod:`shoal.models`, or any :class:`BodyHead`), the split is by the ``body.``/``head.`` name
      prefix; any other trainable parameter (none in our models) counts as body.
    * Otherwise the head is the trainable parameters of the *last* module, in
      ``model.named_modules()`` order, that owns trainable parameters directly (not through a
      child) -- for a ``nn.Sequential`` classifier that is its final ``nn.Linear`` -- and
      everything else is body. A parameter tied to that module (e.g. an embedding shared with
      the output layer) is head under whichever name ``named_parameters`` reports for it.

    A model with no trainable parameters gives ``([], [])``.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    children = dict(model.named_children())
    if isinstance(children.get("body"), nn.Module) and isinstance(children.get("head"), nn.Module):
        head = [name for name, _ in named if name.startswith("head.")]
        body = [name for name, _ in named if not name.startswith("head.")]
        return body, head

    head_ids: set[int] = set()
    for module in model.modules():
        owned = {id(p) for p in module.parameters(recurse=False) if p.requires_grad}
        if owned:
            head_ids = owned
    # Compare parameter objects rather than names so that tied parameters, which
    # named_parameters reports only once under their first name, are still found.
    body = [name for name, p in named if id(p) not in head_ids]
    head = [name for name, p in named if id(p) in head_ids]
    return body, head
