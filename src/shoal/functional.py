"""Flat parameter vectors and functional calls of a model.

Every worker's trainable parameters live in one flat vector ``params_D`` (or a stack
``params_WD`` of many workers). :class:`ParamSpec` maps between that vector and the
``{name: tensor}`` dict that :func:`torch.func.functional_call` expects. Buffers are not
part of the vector: they are shared constants of the model (our models have none that change
during forward; BatchNorm is replaced by GroupNorm so that ``vmap`` works).

Shape suffixes: ``W`` workers, ``D`` flat parameters, ``B`` batch.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from shoal.checks import check_instance

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits_BC, targets_B) -> per-sample losses_B``."""


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (no reduction): the runtime masks and averages it itself.

    Written as ``-log_softmax`` gathered at the target, which is what ``F.cross_entropy``
    computes: under ``vmap`` ``F.cross_entropy`` runs a Python decomposition of ``nll_loss``
    whose first call imports SymPy (~0.8 s) and which is slower on every call.
    """
    logp = F.log_softmax(logits, dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


TRAINABLE_DTYPES = (torch.float32, torch.float64)
"""The parameter dtypes the runtimes train in (half precision would need loss scaling)."""


def param_dtype(model: nn.Module) -> torch.dtype:
    """The one dtype of ``model``'s trainable parameters, float32 or float64.

    The runtimes keep the flat parameters, optimizer state and messages in it; a model in half
    precision, or with parameters of different dtypes, is refused here rather than failing
    deep inside ``vmap`` with a dtype mismatch against the samples.
    """
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    if len(dtypes) != 1 or not dtypes <= set(TRAINABLE_DTYPES):
        found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "none"
        raise ValueError(
            f"model: trainable parameters must all be float32 or all float64, got {found}; "
            "cast the model with model.float() or model.double()"
        )
    return dtypes.pop()


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a model's trainable parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    num_params: int

    @staticmethod
    def of(model: nn.Module) -> ParamSpec:
        names, shapes, offsets = [], [], []
        offset = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            names.append(name)
            shapes.append(p.shape)
            offsets.append(offset)
            offset += p.numel()
        if offset == 0:
            raise ValueError("the model has no trainable parameters")
        return ParamSpec(tuple(names), tuple(shapes), tuple(offsets), offset)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The model's current trainable parameters as one vector ``params_D``, in their dtype
        (:func:`param_dtype`: float32, or float64 for a double model, not rounded to float32)."""
        named = dict(model.named_parameters())
        flat = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        return flat.to(param_dtype(model)).clone()

    def fixed_digest(self, model: nn.Module) -> str:
        """A digest (SHA-256, 16 hex digits) of what training leaves as it is: the model's
        buffers and frozen parameters, by name. A checkpoint holds only the trainable
        parameters; this tells a resume whether the rest is what the run had."""
        h = hashlib.sha256()
        trainable = set(self.names)
        fixed = [(n, p) for n, p in model.named_parameters() if n not in trainable]
        for name, t in [*fixed, *model.named_buffers()]:
            h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
            h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (shape ``[..., D]``) as ``{name: [..., *shape]}``; no copy."""
        if flat.shape[-1:] != (self.num_params,):  # a longer one lost its tail silently
            raise ValueError(
                f"a flat vector of {self.num_params} parameters was expected, got shape "
                f"{tuple(flat.shape)}"
            )
        lead = flat.shape[:-1]
        return {
            name: flat[..., off : off + math.prod(shape)].view(*lead, *shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets)
        }

    def load_into(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Copy ``flat`` into the model's parameters (for saving or plain PyTorch use)."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(flat).items():
                named[name].copy_(value)

    def state_dict(self, model: nn.Module, flat: torch.Tensor) -> dict[str, Any]:
        """``model.state_dict()`` with ``flat`` as its trainable parameters, ``model`` left as
        it is (a run that saves would otherwise hand back a trained model and one that does not
        an untrained one); a tied parameter's every name gets the trained tensor.

        ``flat`` goes into the model for the call and the model's own values back after it:
        only ``model.state_dict()`` itself knows what it holds (a module's extra state, which
        need not be a tensor, or values that a state-dict hook made from the parameters).
        The tensors are copies on the CPU, so that a ``model.pt`` written on a GPU loads with a
        plain ``torch.load`` on a machine without one."""
        own = self.flatten(model)
        self.load_into(model, flat)
        try:
            return {
                k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in model.state_dict().items()
            }
        finally:
            self.load_into(model, own)

    def leaves(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views of ``flat`` that are autograd leaves.

        Differentiating w.r.t. these (not w.r.t. ``flat`` through slices) matters: the backward
        of each slice would allocate and add a zero-filled gradient of the *whole* flat vector,
        one full-size pass per parameter tensor per step.
        """
        return {k: v.requires_grad_(True) for k, v in self.unflatten(flat.detach()).items()}


def unbatchable(model: nn.Module) -> nn.Module | None:
    """The model's first module that ``vmap`` cannot stack, if any, so that its workers are
    trained in a loop: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (fused kernels, ``aten::lstm`` ...)
    and ``nn.RReLU`` (``aten::rrelu``, called in eval mode too; in training mode
    :func:`check_model` refuses it for its random slopes) have no batching rule; an
    ``nn.Embedding`` with a ``padding_idx`` has a wrong one for the vectorized runtime's single
    backward: only the first stacked client's padding row kept a zero gradient."""
    for m in model.modules():
        if isinstance(m, (nn.RNNBase, nn.RReLU)):
            return m
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            return m
    return None


def rnn_backward_backends(model: nn.Module, device: torch.device) -> AbstractContextManager:
    """Where a training step's forward and backward run: cuDNN has no backward for an RNN in
    eval mode ("cudnn RNN backward can only be called in training mode"), so on a GPU a model
    with an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` the user froze with ``.eval()`` trains with cuDNN
    off (PyTorch's own RNN kernels, the CPU's arithmetic); every other model keeps cuDNN."""
    frozen_rnn = any(isinstance(m, nn.RNNBase) and not m.training for m in model.modules())
    if device.type == "cuda" and frozen_rnn:
        return torch.backends.cudnn.flags(enabled=False)
    return nullcontext()


def batch_loss(
    model: nn.Module,
    loss_fn: LossFn,
    named: dict[str, torch.Tensor],
    x_B: torch.Tensor,
    y_B: torch.Tensor,
    mask_B: torch.Tensor,
) -> torch.Tensor:
    """Mean loss of one (possibly padded) batch: padding rows have ``mask_B == 0``.

    Dividing by the number of real rows makes a short last batch the same as PyTorch's
    ``DataLoader(drop_last=False)``, which is what the per-client reference loop does.
    """
    logits = torch.func.functional_call(model, named, (x_B,))
    losses = loss_fn(logits, y_B)
    return (losses * mask_B).sum() / mask_B.sum().clamp_min(1)


def channels_last(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 4-D parameters (2-D convolution kernels) in channels-last memory format.

    Shoal's flat vectors hold every kernel contiguous (``[out, in, h, w]``), but oneDNN's
    CPU convolution and the pooling after it are much faster in channels-last layout, which
    it picks when the kernel is in it: about 41 ms -> 31 ms for a batch-32 step of McMahan's CNN
    on one core. The conversion is a differentiable copy of each kernel (the gradient comes back
    in the flat layout), a few microseconds against the convolution. The values are the same;
    only the summation order inside the kernels differs. Not for ``vmap``-ped calls.
    """
    return {
        k: v.clone(memory_format=torch.channels_last) if v.dim() == 4 else v
        for k, v in named.items()
    }


def channels_last_fits(model: nn.Module, named: dict[str, torch.Tensor], x: torch.Tensor) -> bool:
    """Whether ``model`` has kernels to put in channels-last layout (:func:`channels_last`) and
    runs with them so: a forward that reshapes a kernel with ``.view`` (Weight
    Standardization's ``w.view(out, -1)``) fails on one, in a bare "view size is not
    compatible" deep in the first round. Such a model keeps the flat layout. Checked by one
    forward of two rows in eval mode, without gradients."""
    if not any(v.dim() == 4 for v in named.values()):
        return False
    device = next(iter(named.values())).device
    try:
        with torch.no_grad(), eval_mode(model):
            torch.func.functional_call(model, channels_last(named), (x[:2].to(device),))
    except Exception:  # any failure (an assert on is_contiguous too): the plain layout is
        return False  # used, and a model that fails there fails with its own error
    return True


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, and every submodule back in its own mode after.

    ``model.train(was_training)`` would set one mode on every submodule: a BatchNorm or Dropout
    that the user put in eval mode inside a model in training mode (frozen statistics, as for
    fine-tuning) came back in training mode, where its batch statistics fail or its masks are
    random.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def check_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    num_classes: int,
    loss_fn: LossFn,
) -> None:
    """Refuse, in one line each, a model that the runtimes cannot train on this data, before
    the first round would fail deep inside ``vmap`` or an evaluation (or train silently wrong).

    - BatchNorm in training mode, or without running statistics (it then normalizes by the
      batch's in eval mode too): its batch statistics and running buffers are not parameters,
      so clients neither train nor send them (``vmap`` refuses the in-place buffer update),
      and the statistics would count a padded batch's padding rows. The same for any norm
      layer that updates running statistics in training mode (InstanceNorm with
      ``track_running_stats``: the looped runtime updated the model's own buffers client
      after client).
    - Dropout with ``p > 0`` in training mode: its masks come from torch's global generator,
      which the run's seed does not govern (runs would not repeat), and ``vmap`` refuses it.
      The same for the dropout between the layers of an ``nn.LSTM``/``GRU``/``RNN`` and on
      ``nn.MultiheadAttention``'s weights, and ``nn.RReLU``'s random slopes.
    - A module with parameters registered twice in the model (``Sequential(a, relu, a)``):
      ``functional_call`` replaced its parameters by plain tensors in the user's model.
    - An ``nn.Embedding`` with ``max_norm`` (it renormalizes its weight in place in forward)
      or ``scale_grad_by_freq`` (padding rows of a batch count as tokens).
    - A forward that draws random numbers (``F.dropout``, ``torch.randn_like``: the run's seed
      does not govern torch's global generator), changes a buffer (a counter: the runtimes
      share buffers between clients, and the user's model was changed), or mixes the samples
      of a batch (``h - h.mean(0)``: the runtimes pad batches, and the padding rows joined in).
      Two training-mode forwards on batches of four samples tell; the model is left as it was.
    - A model that cannot take the training samples (shape, dtype; a token id beyond an
      embedding), test samples that differ from them, an output that is not ``[batch,
      classes]`` logits, or a ``loss_fn`` that is not per sample.
    """
    first: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in first and any(True for _ in m.parameters(recurse=False)):
            raise ValueError(
                f"model.{name} is model.{first[id(m)]} again (one module registered twice): "
                "torch.func.functional_call then leaves plain tensors in place of its "
                "parameters; register it once and call it twice in forward, or tie two "
                "modules' weights"
            )
        first.setdefault(id(m), name)
    for name, m in model.named_modules():
        where = f"model.{name}" if name else "the model"
        norm = isinstance(m, nn.modules.batchnorm._NormBase)
        batch_stats = isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
        if norm and (m.training and m.track_running_stats or batch_stats):
            raise ValueError(
                f"{where} is a {type(m).__name__} that normalizes by batch statistics or "
                "updates running ones: they are not parameters, so clients neither train nor "
                "send them; use GroupNorm or LayerNorm (as shoal.models do), or eval mode with "
                "running statistics"
            )
        drop = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else 0.0
        if isinstance(m, nn.RNNBase) and m.num_layers > 1:  # dropout between its layers
            drop = m.dropout
        if isinstance(m, nn.MultiheadAttention):  # dropout on the attention weights
            drop = m.dropout
        if m.training and drop > 0:
            raise ValueError(
                f"{where} is a {type(m).__name__} with dropout {drop}: its masks come from "
                "torch's global generator, not the run's seed (runs would not repeat, and the "
                "vectorized runtime refuses random operations); remove it or set it to 0"
            )
        if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq):
            raise ValueError(
                f"{where} is an Embedding with max_norm or scale_grad_by_freq: the first "
                "renormalizes its weight in place in forward, the second counts a padded "
                "batch's padding rows; remove them (clip or regularize the weight instead)"
            )
        if isinstance(m, nn.RReLU) and m.training:
            raise ValueError(
                f"{where} is an RReLU: in training mode it draws its negative slopes from "
                "torch's global generator, not the run's seed (runs would not repeat, and the "
                "vectorized runtime refuses random operations); use "
                f"nn.LeakyReLU({(m.lower + m.upper) / 2:g}), what it computes in eval mode"
            )
    if len(x_test) == 0:  # every row's test accuracy was NaN, and summary.json held NaN
        raise ValueError("the test set is empty: give the data a test split to score the model on")
    # The samples may stay where the data is (the CPU): each probe moves its few rows.
    dev = _device_of(model, x)
    if x_test.dtype != x.dtype or x_test.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"test samples are {tuple(x_test.shape[1:])} {x_test.dtype}, training samples "
            f"{tuple(x.shape[1:])} {x.dtype}: they must agree"
        )
    try:
        with torch.no_grad(), eval_mode(model), _kept_rng(dev):
            logits = model(x[:2].to(dev))
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        mine = param_dtype(model)
        if x.is_floating_point() and mine.is_floating_point and x.dtype != mine:
            # "features should be float32" of float32 features, for a float64 model.
            raise ValueError(
                f"the model's parameters are {mine}, the training samples {x.dtype}: convert "
                f"one to the other (model.to({x.dtype}) or the data's x.to({mine}))"
            ) from None
        raise ValueError(
            f"the model cannot take the training samples ({tuple(x.shape[1:])} {x.dtype}; "
            f"features should be float32, or int64 token ids): {e}"
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"the model returns a {type(logits).__name__}; it must return one tensor of logits "
            "[batch, classes]"
        )
    if loss_fn is cross_entropy and (logits.dim() != 2 or logits.shape[-1] < num_classes):
        raise ValueError(
            f"the model's output has shape {tuple(logits.shape)} for 2 samples; cross-entropy "
            f"needs logits [batch, classes] with at least the data's {num_classes} classes"
        )
    _check_token_ids(model, x, dev)
    _check_training_forward(model, x, dev)
    try:
        with torch.no_grad():
            losses = loss_fn(logits, y[:2].to(dev))
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"loss_fn cannot take the model's output and labels: {e}") from None
    if not isinstance(losses, torch.Tensor) or losses.shape != y[:2].shape:
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return one loss per sample (shape {tuple(y[:2].shape)} here), got "
            f"{got}; use reduction='none' (shoal.cross_entropy is one)"
        )
    _warn_negative_loss(model, x, y, loss_fn, dev)


def _warn_negative_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, dev: torch.device
) -> None:
    """nn.NLLLoss(reduction="none") of raw logits trained to chance, without a word: its
    "loss" is ``-logit[y]``, negative for about half the samples of a fresh model. And a model
    ending in ``nn.Softmax`` under cross-entropy (which takes logits) trains badly: its
    outputs are rows of probabilities, which logits of a fresh model almost never are."""
    with torch.no_grad(), eval_mode(model), _kept_rng(dev):
        out = model(x[:64].to(dev))
        losses = loss_fn(out, y[:64].to(dev))
    if loss_fn is cross_entropy and out.dim() == 2 and out.shape[-1] > 1:
        sums = out.double().sum(-1)
        if bool(((out >= 0).all() & (sums - 1).abs().le(1e-4).all()).item()):
            warnings.warn(
                "the model's outputs are probabilities (each row sums to 1), but "
                "cross-entropy takes logits: remove the final softmax",
                stacklevel=4,  # train's caller
            )
    if bool((losses < 0).any()):
        warnings.warn(
            "loss_fn returned negative losses on the first training samples: a classification "
            "loss is >= 0. nn.NLLLoss expects log-probabilities (end the model with "
            "nn.LogSoftmax) -- or use shoal.cross_entropy on logits",
            stacklevel=4,  # train's caller
        )


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    """Where the model computes: its first parameter's or buffer's device (else ``x``'s)."""
    first: torch.Tensor | None = next(model.parameters(), None)
    first = first if first is not None else next(model.buffers(), None)
    return first.device if first is not None else x.device


def _check_token_ids(model: nn.Module, x: torch.Tensor, dev: torch.device) -> None:
    """Token ids beyond an embedding's rows failed in round 1 with a bare ``IndexError`` when
    the first samples (the ones tried above) happened to be in range."""
    tables = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    if not tables or x.is_floating_point() or x.numel() == 0:
        return
    row = int(x.reshape(len(x), -1).max(dim=1).values.argmax())
    # On a GPU an index beyond a table is an asynchronous device assert, which no try here
    # catches (and which ends the CUDA context): the probe runs on a CPU copy then.
    probe = model if dev.type == "cpu" else copy.deepcopy(model).cpu()
    try:  # the model may map ids before its embedding: only a failing forward is proof
        with torch.no_grad(), eval_mode(probe), _kept_rng(torch.device("cpu")):
            probe(x[row : row + 1].cpu())
    except (RuntimeError, IndexError) as e:
        sizes = ", ".join(str(m.num_embeddings) for m in tables)
        raise ValueError(
            f"training sample {row} has token id {int(x.max())}, and the model cannot take it "
            f"(embedding rows: {sizes}); size the vocabulary from the data: {e}"
        ) from None


@contextmanager
def _kept_rng(device: torch.device) -> Iterator[Callable[[], bool]]:
    """torch's global generators (the CPU's, and ``device``'s if CUDA) put back as they were
    after the block; inside it, the function yielded tells whether anything drew from them."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def changed() -> bool:
        return not torch.equal(torch.get_rng_state(), cpu) or (
            cuda is not None and not torch.equal(torch.cuda.get_rng_state(device), cuda)
        )

    try:
        yield changed
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _check_training_forward(model: nn.Module, x: torch.Tensor, dev: torch.device) -> None:
    """One forward in the model's own (training) mode on a few samples, refusing what the
    runtimes would train silently wrong; see :func:`check_model`. Buffers and the global
    random generators are put back as they were."""
    if len(x) < 2:
        return
    # Two batches of one size (so one kernel choice: cuDNN may pick another algorithm, with
    # TF32, for another batch size) whose first two rows are the same samples and whose
    # other two differ: a model that mixes a batch's samples gives those two rows otherwise.
    others = {2: ([0, 0], [1, 1]), 3: ([2, 2], [0, 0])}.get(len(x), ([2, 3], [3, 3]))
    batches = [x[[0, 1, *rest]].to(dev) for rest in others]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    try:
        with _kept_rng(dev) as rng_changed, torch.no_grad():
            one, other = (model(b) for b in batches)
            drew = rng_changed()
        changed = [name for name, b in model.named_buffers() if not torch.equal(b, buffers[name])]
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    if drew:
        raise ValueError(
            "the model draws random numbers in forward (F.dropout, torch.randn_like, ...): "
            "they come from torch's global generator, not the run's seed, so runs would not "
            "repeat (and the vectorized runtime refuses random operations); remove them"
        )
    if changed:
        raise ValueError(
            f"the model changes its buffer(s) {', '.join(changed)} in forward: buffers are not "
            "parameters, so the runtimes share one copy between all clients (and the model "
            "passed in was changed); keep the state in a parameter or out of the model"
        )
    if not (isinstance(one, torch.Tensor) and isinstance(other, torch.Tensor)):
        raise ValueError(
            f"in training mode the model returns a {type(one).__name__} (an auxiliary head?); "
            "it must return one tensor of logits [batch, classes]"
        )
    # NaN weights are reported as divergence, later.
    if bool(torch.isfinite(one[:2]).all()) and bool(torch.isfinite(other[:2]).all()):
        scale = float(one[:2].detach().abs().max()) if one.numel() else 0.0
        if not torch.allclose(one[:2], other[:2], rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
            raise ValueError(
                "the model's output for a sample depends on the other samples of its batch "
                "(batch statistics, h - h.mean(0)): the runtimes pad batches to one size, and "
                "the padding rows would join in; compute each sample's output from it alone"
            )


def check_run_inputs(init: Any, callback: Any) -> None:
    """``init`` and ``callback`` of ``train`` and ``train_parallel``, before any work: a list
    for ``init`` failed in an AttributeError, a NaN in it was reported after the first round
    as a divergence, and a callback that is not callable failed only after training."""
    if init is not None:
        check_instance(init, torch.Tensor, "init", " of the flat parameters (see init_params)")
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init has NaN or inf entries")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (row -> None), got {type(callback).__name__}")
    if callback is not None:
        try:  # one of another signature failed only after the first round had trained
            inspect.signature(callback).bind({})
        except TypeError:
            raise TypeError(
                "callback must take one argument, the metrics row (row -> None)"
            ) from None
        except ValueError:  # a builtin without a signature: left to the call
            pass


def start_params(
    model: nn.Module, spec: ParamSpec, init: torch.Tensor | None, dev: torch.device
) -> torch.Tensor:
    """A run's first flat parameters (``init``, else the model's), for ``train`` and
    ``train_parallel``: on ``dev`` in the model's own dtype (a float64 model trains in
    float64; the runtimes' functional calls pair them with its samples), and detached: an
    ``init`` that requires grad (``parameters_to_vector`` of a model) carried an autograd
    graph through every round, 7.5 GB after 200 FedAdam rounds of a 1M-parameter MLP."""
    params = (init if init is not None else spec.flatten(model)).detach()
    params = params.to(dev, param_dtype(model))
    if params.shape != (spec.num_params,):
        raise ValueError(f"init has shape {tuple(params.shape)}, expected ({spec.num_params},)")
    return params


def init_params(build: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """Build a model with a fixed seed and return it with its flat initial parameters."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build()
    finally:
        torch.random.set_rng_state(state)
    return model, ParamSpec.of(model).flatten(model)
