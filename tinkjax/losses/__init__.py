"""Tinker's built-in losses as pure per-token functions, and their registry."""

from tinkjax.losses._functions import (
    cispo,
    cross_entropy,
    dro,
    gspo,
    importance_sampling,
    ppo,
    stable_reinforce,
)
from tinkjax.losses._graph import (
    MAX_CONSTANTS,
    MAX_ELEMENTS,
    MAX_GRAPH_INPUTS,
    MAX_NODES,
    LossGraph,
    LossGraphError,
    parse_loss_graph,
)
from tinkjax.losses._registry import (
    LOSS_FUNCTIONS,
    LOSS_SUM_METRIC,
    LossDefinition,
    check_loss_inputs,
    compute_elementwise_loss,
    get_loss_definition,
    loss_metrics,
    resolve_loss_config,
)

__all__ = [
    "LOSS_FUNCTIONS",
    "LOSS_SUM_METRIC",
    "MAX_CONSTANTS",
    "MAX_ELEMENTS",
    "MAX_GRAPH_INPUTS",
    "MAX_NODES",
    "LossDefinition",
    "LossGraph",
    "LossGraphError",
    "check_loss_inputs",
    "cispo",
    "compute_elementwise_loss",
    "cross_entropy",
    "dro",
    "get_loss_definition",
    "gspo",
    "importance_sampling",
    "loss_metrics",
    "parse_loss_graph",
    "ppo",
    "resolve_loss_config",
    "stable_reinforce",
]
