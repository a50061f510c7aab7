"""Marked temporal point processes (Hawkes, self-correcting, renewal): exact simulation and
log-likelihoods, a maximum-likelihood Hawkes fit, and the long-horizon metrics of HoTPP."""

from seqlab.data.point_processes.base import PointProcess
from seqlab.data.point_processes.hawkes import Hawkes, fit_hawkes
from seqlab.data.point_processes.horizon_metrics import (
    average_precision,
    match_within,
    mean_otd,
    otd,
    t_map,
)
from seqlab.data.point_processes.renewal import Renewal
from seqlab.data.point_processes.self_correcting import SelfCorrecting

__all__ = [
    "Hawkes",
    "PointProcess",
    "Renewal",
    "SelfCorrecting",
    "average_precision",
    "fit_hawkes",
    "match_within",
    "mean_otd",
    "otd",
    "t_map",
]
