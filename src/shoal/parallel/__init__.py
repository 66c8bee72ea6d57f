"""Data-parallel and decentralized training: every worker holds its own shard and model.

The same algorithm code runs with every worker stacked on a leading axis in one process
(:class:`SimComm`) and with one worker per ``torch.distributed`` process (:class:`DistComm`,
gloo on CPU, NCCL on GPU)::

    comm = SimComm(8)                                   # or DistComm(init_from_env())
    result = train_parallel(model, data, shards, dpsgd(0.1, ring(8)), ParallelConfig(500), comm)

Methods: :func:`sync_sgd` (all-reduce SGD, optionally compressed), :func:`dgc` (Deep Gradient
Compression), :func:`local_sgd`, :func:`dpsgd` (gossip), :func:`sgp` (push-sum),
:func:`easgd` / :func:`eamsgd` (elastic averaging; asynchronous with a parameter server in
distributed runs), :func:`robust_gossip`
(Byzantine-robust gossip: clipped, trimmed or nearest-neighbour averaging of neighbours).
"""

from shoal.parallel.algorithms import (
    DPSGD,
    EASGD,
    SGP,
    LocalSGD,
    ParallelDGC,
    RobustGossip,
    SyncSGD,
    clipped_gossip,
    dgc,
    dissensus,
    dpsgd,
    eamsgd,
    easgd,
    local_sgd,
    nna_gossip,
    plain_gossip,
    robust_gossip,
    sgp,
    sync_sgd,
    trimmed_gossip,
)
from shoal.parallel.base import GradFn, ParallelAlgorithm, State
from shoal.parallel.comm import Comm, DistComm, SimComm
from shoal.parallel.config import ParallelConfig, ParallelResult
from shoal.parallel.graph import Neighbors
from shoal.parallel.loop import train_parallel

__all__ = [
    "DPSGD",
    "EASGD",
    "SGP",
    "Comm",
    "DistComm",
    "GradFn",
    "LocalSGD",
    "Neighbors",
    "ParallelAlgorithm",
    "ParallelConfig",
    "ParallelDGC",
    "ParallelResult",
    "RobustGossip",
    "SimComm",
    "State",
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
    "train_parallel",
    "trimmed_gossip",
]
