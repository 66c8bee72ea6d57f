"""Data-parallel and decentralized training methods, one paper per module.

Each is a frozen dataclass with ``name``, ``init(params_WD, comm)``, ``step(params_WD,
grad_fn, state, comm, step)`` and ``model(params_WD, state)`` (see
:mod:`shoal.parallel.base`), and a lower-case factory.
"""

from shoal.parallel.algorithms.dgc import ParallelDGC, dgc
from shoal.parallel.algorithms.dpsgd import DPSGD, dpsgd
from shoal.parallel.algorithms.easgd import EASGD, eamsgd, easgd
from shoal.parallel.algorithms.local_sgd import LocalSGD, local_sgd
from shoal.parallel.algorithms.robust_gossip import (
    RobustGossip,
    clipped_gossip,
    dissensus,
    nna_gossip,
    plain_gossip,
    robust_gossip,
    trimmed_gossip,
)
from shoal.parallel.algorithms.sgp import SGP, sgp
from shoal.parallel.algorithms.sync_sgd import SyncSGD, sync_sgd

__all__ = [
    "DPSGD",
    "EASGD",
    "SGP",
    "LocalSGD",
    "ParallelDGC",
    "RobustGossip",
    "SyncSGD",
    "clipped_gossip",
    "dgc",
    "dissensus",
    "dpsgd",
    "eamsgd",
    "easgd",
    "local_sgd",
    "nna_gossip",
    "plain_gossip",
    "robust_gossip",
    "sgp",
    "sync_sgd",
    "trimmed_gossip",
]
