"""Federated optimization algorithms, one paper per module; see each module's docstring."""

from shoal.algorithms.base import Algorithm, LocalWork
from shoal.algorithms.dgc import DGC, dgc
from shoal.algorithms.fedavg import FedAvg, fedavg
from shoal.algorithms.fednova import FedNova, fednova
from shoal.algorithms.fedopt import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
)
from shoal.algorithms.fedprox import FedProx, fedprox
from shoal.algorithms.fedsgd import FedSGD, fedsgd
from shoal.algorithms.scaffold import Scaffold, scaffold

__all__ = [
    "DGC",
    "Algorithm",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedNova",
    "FedProx",
    "FedSGD",
    "FedYogi",
    "LocalWork",
    "Scaffold",
    "dgc",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fednova",
    "fedprox",
    "fedsgd",
    "fedyogi",
    "scaffold",
]
