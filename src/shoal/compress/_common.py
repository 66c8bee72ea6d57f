"""Helpers shared by the compressor families: input checks, index dtypes, seeds, bit packing.

Shape suffixes: ``D`` flat parameters, ``K`` kept entries.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from shoal.checks import is_real

_MASK64 = (1 << 64) - 1


def check_flat(x_D: Any, who: str) -> torch.Tensor:
    """``x_D`` must be a 1-D floating-point tensor (a flat message); returned detached from
    autograd and contiguous."""
    if not isinstance(x_D, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(x_D).__name__}")
    if not x_D.is_floating_point():
        raise TypeError(f"{who}: expected a floating-point tensor, got {x_D.dtype}")
    if x_D.dim() != 1:
        raise ValueError(
            f"{who}: expected a flat vector x_D (1-D), got shape {tuple(x_D.shape)}; "
            "flatten it first (shoal.functional.ParamSpec.flatten)"
        )
    # A message is data: a vector that requires grad left the autograd graph in QSGD's norms
    # and the count sketch's table, whose decompress then failed in an in-place op. And one
    # layout: a strided view's sums (QSGD's norms) differed from its copy's by an ulp.
    return x_D.detach().contiguous()


def as_shapes(shapes: Any, who: str) -> tuple[torch.Size, ...]:
    """Validate a list of parameter shapes (e.g. ``ParamSpec.shapes``) into a tuple."""
    if isinstance(shapes, (torch.Tensor, str, bytes)):
        raise ValueError(f"{who}: shapes must be a sequence of torch.Size, got {shapes!r}")
    try:
        out = tuple(torch.Size(s) for s in shapes)
    except TypeError as exc:
        raise ValueError(f"{who}: shapes must be a sequence of torch.Size, got {shapes!r}") from exc
    if not out:
        raise ValueError(f"{who}: shapes is empty; pass ParamSpec.shapes")
    negative = [tuple(s) for s in out if any(n < 0 for n in s)]
    if negative:
        raise ValueError(f"{who}: shapes must not have negative sizes, got {negative[0]}")
    return out


def check_dense(payloads: Any, numel: int, who: str) -> None:
    """Each payload's ``dense`` part (the blocks sent uncompressed) holds ``numel`` entries: a
    longer one, of a compressor with other shapes, was cut to length and decoded silently."""
    for p in payloads:
        if "dense" in p and p["dense"].numel() != numel:
            raise ValueError(
                f"{who}: the message's dense part holds {p['dense'].numel()} entries, this "
                f"compressor's uncompressed blocks {numel}; decode it with the one that made it"
            )


def init_with_seed(compressor: Any, x_D: torch.Tensor, seed: int | None) -> Any:
    """``compressor.init(x_D, seed=seed)`` if it takes a seed and one is given, else ``init(x_D)``.

    Seeds are an optional extra of ``init``: the protocol itself is ``init(x_D)``.
    """
    if seed is not None and "seed" in inspect.signature(compressor.init).parameters:
        return compressor.init(x_D, seed=seed)
    return compressor.init(x_D)


def check_ratio(ratio: float, who: str) -> None:
    if not (is_real(ratio) and 0.0 < ratio <= 1.0):
        raise ValueError(f"{who}: ratio must be in (0, 1], got {ratio!r}")


def num_kept(ratio: float, d: int) -> int:
    """``ceil(ratio * d)``, at least 1 and at most ``d`` (DGC's ``num_selects``).

    The product is rounded to 9 significant decimals first so that ``0.1 * 100`` is 10, not 11.
    """
    return max(1, min(d, math.ceil(round(ratio * d, 9))))


def smallest_int_dtype(max_value: int) -> torch.dtype:
    """The smallest of uint8 / int16 / int32 / int64 that holds ``0 .. max_value``."""
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    if max_value <= 255:
        return torch.uint8
    if max_value <= 2**15 - 1:
        return torch.int16
    if max_value <= 2**31 - 1:
        return torch.int32
    return torch.int64


def index_dtype(d: int) -> torch.dtype:
    """The smallest integer dtype that holds every index of a length-``d`` vector."""
    return smallest_int_dtype(max(d - 1, 0))


def size_scalar(d: int, device: torch.device) -> torch.Tensor:
    """The message length ``d`` as a 0-d tensor of the smallest integer dtype that holds it."""
    return torch.tensor(d, dtype=smallest_int_dtype(d), device=device)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """Arithmetic dtype for quantizers: float64 stays float64, everything else is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---- seeds: a shared seed plus a per-call counter, mixed with SplitMix64 ----------------------


def mix(*values: int) -> int:
    """Hash integers into one 63-bit seed (SplitMix64 finaliser, chained)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = h ^ (h >> 31)
    return h & ((1 << 63) - 1)


def generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` whose stream depends only on ``(seed, step)``."""
    g = torch.Generator(device=device)
    g.manual_seed(mix(seed, step))
    return g


def seed_state(seed: int) -> dict[str, int]:
    """The state of a stochastic compressor: its seed and a call counter, plain ints.

    They were 0-d int64 tensors: a checkpoint of 20,000 clients' states took 1.5 s to save
    (48 ms as ints), every round, and reading a counter on a GPU waited for the device.
    States saved as tensors still load: :func:`check_seed_state` reads either."""
    return {"seed": int(seed), "step": 0}


def check_seed_state(state: Any, who: str) -> tuple[int, int]:
    if not isinstance(state, dict) or "seed" not in state or "step" not in state:
        raise ValueError(f"{who}: state must come from {who}.init(x_D)")
    return int(state["seed"]), int(state["step"])


def next_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "step": int(state["step"]) + 1}


# ---- bit packing ---------------------------------------------------------------------------


def code_bits(num_codes: int) -> int:
    """Bits per code for ``num_codes`` symbols, rounded up to 1, 2, 4, 8, 16 or 32.

    Byte-aligned widths keep packing a reshape and a shift; a 3-symbol code (QSGD s=1,
    TernGrad) takes 2 bits, 5..16 symbols take 4.
    """
    for bits in (1, 2, 4, 8, 16, 32):
        if num_codes <= 2**bits:
            return bits
    raise ValueError(f"too many codes: {num_codes}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes ``< 2**bits`` (integer-valued or bool, any dtype, 1-D) into
    a byte-aligned tensor.

    1/2/4-bit codes go ``8 // bits`` to a uint8 byte (first code in the low bits); 8-bit codes
    are uint8; 16- and 32-bit codes are stored as int16 / int32 holding ``code - 2**(bits-1)``.
    """
    if codes.dtype == torch.bool:
        codes = codes.view(torch.uint8)  # bools are 0/1 bytes: no conversion pass
    if bits == 8:
        return codes.to(torch.uint8)
    if bits == 16:
        return (codes.to(torch.int32) - 2**15).to(torch.int16)
    if bits == 32:
        return (codes.to(torch.int64) - 2**31).to(torch.int32)
    per_byte = 8 // bits
    n = codes.numel()
    pad = (-n) % per_byte
    c = codes.to(torch.uint8)
    if pad:
        c = torch.cat([c, c.new_zeros(pad)])
    c = c.view(-1, per_byte)
    packed = c[:, 0].clone()
    for j in range(1, per_byte):  # one OR per slot: 2x faster than a shifted row sum
        packed |= c[:, j] << (j * bits)
    return packed


def unpack_codes(
    packed: torch.Tensor, bits: int, n: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``n`` codes, as ``dtype`` (a float dtype
    saves an int64 pass where the caller computes in floats; exact for 1- to 8-bit codes)."""
    if bits == 8:
        return packed[:n].to(dtype)
    if bits == 16 or bits == 32:
        return (packed.to(torch.int64)[:n] + 2 ** (bits - 1)).to(dtype)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    codes = (packed.view(-1, 1) >> shifts).bitwise_and_(mask)
    return codes.reshape(-1)[:n].to(dtype)
