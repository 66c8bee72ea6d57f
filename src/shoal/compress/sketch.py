"""Count sketch: a linear, summable summary of a vector.

Charikar, Chen, Farach-Colton, ICALP 2002; used for gradients by Ivkin et al. 2019 (Sketched
SGD) and Rothchild et al., ICML 2020 (FetchSGD). A ``[depth, width]`` table ``S`` with, per row
j, a bucket hash ``h_j`` and a sign hash ``s_j``::

    S[j, h_j(i)] += s_j(i) x_i          x_hat_i = median_j s_j(i) S[j, h_j(i)]

(with an even depth, the median is the mean of the two middle values).

The hashes are ``((a i + b) mod p) mod width`` with ``p = 2**31 - 1`` and ``(a, b)`` drawn from
the seed (a 2-universal family), computed on the input's device; nothing about them travels.
Computing them is most of the work (six 64-bit hash evaluations per entry at depth 3), so they
are kept, as int32 table positions and float signs (8 bytes per entry and row), for the most
recent vector lengths up to :data:`HASH_CACHE_BYTES` in all: 12x faster compression and
decompression of a 10M-entry vector.

Homomorphic (Jang, Na, Yoon 2017): the sketch is linear in x, so for workers with the same
seed, ``sum_payloads`` (adding the tables) equals the sketch of the summed inputs, exactly in
exact arithmetic, bit for bit when the float additions are exact (e.g. integer-valued inputs),
up to rounding otherwise. What is *approximate* is decompression: ``x_hat`` is an estimate
(error about ``||x_tail||_2 / sqrt(width)`` per row for the heavy entries), and because of the
median, ``decompress(sum)`` is *not* ``sum(decompress)``: it estimates the sum from one table,
at the cost of one decode instead of one per worker. Neither is closer to the true sum in
general (on ten FedAvg client deltas of the mnist5k CNN the mean of the ten decodes was the
closer one, by 3-7% relative error). With ``depth = 1`` the estimate is unbiased and linear,
and the two agree.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from shoal.checks import check_count, check_seed
from shoal.compress._common import check_flat, mix, size_scalar
from shoal.compress.base import Payload, add_all, check_same
from shoal.compress.wire import payload_nbytes

_PRIME = 2**31 - 1
HASH_CACHE_BYTES = 256 * 2**20
"""The most memory kept hashes may take (a 10M-entry vector at depth 3 takes 240 MB)."""

_HashKey = tuple[int, int, int, int, torch.device]
_hash_cache: OrderedDict[_HashKey, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


@dataclass(frozen=True)
class CountSketch:
    """Payload: ``table`` [depth, width] in the input's dtype and ``size``. No state."""

    width: int
    depth: int = 3
    seed: int = 0
    homomorphic: ClassVar[bool] = True
    contractive: ClassVar[bool] = False  # each estimate carries its bucket-mates' mass
    shared_seed: ClassVar[bool] = True
    """The hashes must agree for sketches to add up (they come from ``seed``, not the state)."""

    def __post_init__(self) -> None:
        check_count(self.width, "count_sketch: width")
        check_count(self.depth, "count_sketch: depth")
        check_seed(self.seed, "count_sketch: seed")

    @property
    def name(self) -> str:
        return f"count_sketch(width={self.width}, depth={self.depth})"

    def hashes(self, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bucket_RD, sign_RD)``: row-major flat table positions (int32) and +-1 signs
        (float32), ``[depth, d]``; kept for reuse (see the module docstring). Read-only."""
        if d >= _PRIME or self.depth * self.width >= 2**31:
            raise ValueError("count_sketch: vectors and tables must have < 2**31 - 1 entries")
        key = (self.seed, self.width, self.depth, d, torch.device(device))
        if key in _hash_cache:
            _hash_cache.move_to_end(key)
            return _hash_cache[key]
        bucket_RD, sign_RD = self._compute_hashes(d, device)
        hashes = bucket_RD.to(torch.int32), sign_RD.to(torch.float32)
        size = 8 * self.depth * d
        if size <= HASH_CACHE_BYTES:
            while _hash_cache and size + _cached_bytes() > HASH_CACHE_BYTES:
                _hash_cache.popitem(last=False)  # the least recently used length goes
            _hash_cache[key] = hashes
        return hashes

    def _compute_hashes(self, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(mix(self.seed, d))
        coef = torch.tensor(
            [[rng.randrange(1, _PRIME), rng.randrange(_PRIME)] for _ in range(2 * self.depth)],
            dtype=torch.int64,
            device=device,
        ).view(2, self.depth, 2)
        i_D = torch.arange(d, dtype=torch.int64, device=device)
        h_RD = (coef[..., 0:1] * i_D + coef[..., 1:2]) % _PRIME  # [2, depth, d]
        rows = torch.arange(self.depth, dtype=torch.int64, device=device)[:, None]
        bucket_RD = rows * self.width + h_RD[0] % self.width
        sign_RD = (h_RD[1] & 1) * 2 - 1
        return bucket_RD, sign_RD

    def init(self, x_D: torch.Tensor) -> None:
        return None

    def compress(self, x_D: torch.Tensor, state: None) -> tuple[Payload, None]:
        x_D = check_flat(x_D, self.name)
        bucket_RD, sign_RD = self.hashes(x_D.numel(), x_D.device)
        # Half-precision inputs are summed in float32 and rounded once: added in their own
        # dtype, every addition rounded (a bf16 bucket of 1000 ones summed to 256).
        work = torch.float32 if x_D.dtype in (torch.float16, torch.bfloat16) else x_D.dtype
        table = x_D.new_zeros(self.depth * self.width, dtype=work)
        index, values = bucket_RD.reshape(-1), (sign_RD.to(work) * x_D).reshape(-1)
        if table.is_cuda:  # CUDA's index_add_ adds with atomics (run-to-run different bits)
            table.index_put_((index.long(),), values, accumulate=True)
        else:  # the CPU loop is sequential, so deterministic
            table.index_add_(0, index, values)
        payload = {
            "table": table.to(x_D.dtype).view(self.depth, self.width),
            "size": size_scalar(x_D.numel(), x_D.device),
        }
        return payload, state

    def decompress(self, payload: Payload) -> torch.Tensor:
        table = payload["table"]
        if table.shape != (self.depth, self.width):  # another sketch's table, read silently
            raise ValueError(
                f"count_sketch: the message's table is {tuple(table.shape)}, this sketch's "
                f"({self.depth}, {self.width}); decode it with the sketch that made it"
            )
        bucket_RD, sign_RD = self.hashes(int(payload["size"]), table.device)
        estimates_RD = table.reshape(-1).index_select(0, bucket_RD.reshape(-1))
        estimates_RD = estimates_RD.view(bucket_RD.shape).mul_(sign_RD.to(table.dtype))
        if self.depth == 3:  # the same value as median(), by comparisons instead of a sort
            a, b, c = estimates_RD  # rows of our own buffer: overwritten in place
            low = torch.minimum(a, b)
            high = torch.minimum(torch.maximum(a, b, out=a), c, out=a)
            return torch.maximum(low, high, out=low)
        if self.depth % 2:
            return estimates_RD.median(dim=0).values
        # Even depth: the mean of the two middle rows. torch's median() would return the lower
        # one, which biases every estimate downwards (at depth 2, the min of the two rows).
        middle = estimates_RD.sort(dim=0).values[self.depth // 2 - 1 : self.depth // 2 + 1]
        mid = middle.mean(dim=0)
        # The mean overflows for two float32 estimates of 3e38; halving first cannot, but would
        # round subnormal middles differently, so it is used only where the plain one is inf.
        return torch.where(mid.isinf(), middle[0] / 2 + middle[1] / 2, mid)

    def nbytes(self, payload: Payload) -> int:
        return payload_nbytes(payload)

    def sum_payloads(self, payloads: Sequence[Payload]) -> Payload:
        """Add the tables (same seed and length): the sketch of the summed inputs. A table
        does not carry its hashes' seed (it would cost bytes on every message), so tables of
        sketches seeded apart add up without complaint: every worker needs one seed."""
        check_same(payloads, ("size",), "count_sketch")
        return {**payloads[0], "table": add_all([p["table"] for p in payloads])}


def _cached_bytes() -> int:
    return sum(b.numel() * 4 + s.numel() * 4 for b, s in _hash_cache.values())


def count_sketch(width: int, depth: int = 3, seed: int = 0) -> CountSketch:
    """A ``depth x width`` count sketch with hashes from ``seed`` (shared by all workers)."""
    return CountSketch(width=width, depth=depth, seed=seed)
