"""Message compressors with exact byte accounting.

Every compressor is a frozen dataclass with ``init / compress / decompress / nbytes`` (see
:mod:`shoal.compress.base`); ``nbytes(p) == len(serialize(p))`` for the wire format of
:mod:`shoal.compress.wire`. Families, one per module: ``cast`` (fp16, bf16), ``sparsify``
(top-k, random-k, threshold, DGC), ``quantize`` (QSGD, TernGrad, scaled sign, natural
compression), ``low_rank`` (PowerSGD), ``sketch`` (count sketch); wrappers: ``feedback``
(error feedback), ``layerwise`` (one compressor per parameter block), ``lgreco`` (L-GreCo: a
top-k, QSGD or PowerSGD level per layer).
"""

from shoal.compress._common import index_dtype
from shoal.compress.base import (
    Compressor,
    Homomorphic,
    Identity,
    Payload,
    decompress_sum,
    identity,
    init_for_worker,
    is_contractive,
    is_homomorphic,
    is_two_round,
    tensor_bytes,
)
from shoal.compress.cast import Cast, bf16, fp16
from shoal.compress.feedback import ErrorFeedback, error_feedback, without_feedback
from shoal.compress.layerwise import Layerwise, layerwise, skip_1d
from shoal.compress.lgreco import LGreCo, lgreco_powersgd, lgreco_qsgd, lgreco_top_k
from shoal.compress.low_rank import PowerSGD, powersgd
from shoal.compress.quantize import (
    QSGD,
    NaturalCompression,
    ScaledSign,
    TernGrad,
    natural_compression,
    qsgd,
    scaled_sign,
    terngrad,
)
from shoal.compress.sketch import CountSketch, count_sketch
from shoal.compress.sparsify import (
    DGCTopK,
    RandomK,
    Threshold,
    TopK,
    dgc_top_k,
    random_k,
    threshold,
    top_k,
)
from shoal.compress.wire import deserialize, payload_nbytes, serialize

__all__ = [
    "QSGD",
    "Cast",
    "Compressor",
    "CountSketch",
    "DGCTopK",
    "ErrorFeedback",
    "Homomorphic",
    "Identity",
    "LGreCo",
    "Layerwise",
    "NaturalCompression",
    "Payload",
    "PowerSGD",
    "RandomK",
    "ScaledSign",
    "TernGrad",
    "Threshold",
    "TopK",
    "bf16",
    "count_sketch",
    "decompress_sum",
    "deserialize",
    "dgc_top_k",
    "error_feedback",
    "fp16",
    "identity",
    "index_dtype",
    "init_for_worker",
    "is_contractive",
    "is_homomorphic",
    "is_two_round",
    "layerwise",
    "lgreco_powersgd",
    "lgreco_qsgd",
    "lgreco_top_k",
    "natural_compression",
    "payload_nbytes",
    "powersgd",
    "qsgd",
    "random_k",
    "scaled_sign",
    "serialize",
    "skip_1d",
    "tensor_bytes",
    "terngrad",
    "threshold",
    "top_k",
    "without_feedback",
]
