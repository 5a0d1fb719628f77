"""Secure aggregation (SecAgg+, Bell et al. 2020) on the coordinator, from the federation config.

With ``secagg = true`` the coordinator runs Flower's :class:`SecAggPlusWorkflow` as the
fit step of its :class:`DefaultWorkflow`; the rest of the server (strategy, recording,
checkpoints, audit) is the same code path. The workflow has four message rounds per
training round — setup (public keys), share keys (encrypted Shamir shares of each
node's mask secrets), collect masked vectors (each node's weighted, clipped,
quantized parameters plus pairwise and private masks) and unmask (surviving nodes
send the shares needed to remove the masks, including those of nodes that dropped).

Contract with the node (``fedmed.clients.secagg``): every SecAgg+ message carries the
``secaggplus_configs`` record; the node runs Flower's ``secaggplus_mod`` on exactly
those messages. What the coordinator sees: the **sum** of the nodes' masked vectors,
i.e. the weighted average of the parameters, plus each node's ``num_examples`` and
metrics (site name, ε spent, audit head) — never one node's parameters.

Settings (``[tool.flwr.app.config]``):

- ``secagg-num-shares``: neighbours each node shares its secrets with (itself included).
  ≤ 1 is a fraction of the nodes sampled that round (1.0: every node, plain SecAgg's
  full graph); > 1 a count (SecAgg+'s sparse graph, O(log n) suffices).
- ``secagg-threshold``: shares needed to rebuild a node's secret. ≤ 1 a fraction of
  the shares (at least 2), > 1 a count. Higher is more private (more nodes must
  collude), lower tolerates more dropouts: a round survives while every node keeps
  at least this many live neighbours.
- ``secagg-clipping-range``: each uploaded value ``p · num_examples / max_weight`` is
  clipped to ±range before quantization to 2²² levels. Parameters larger than
  ``range · max_weight / num_examples`` in magnitude are silently clipped.
- ``secagg-max-weight``: the largest ``num_examples`` a node may claim; weights above
  it overflow the quantization (Flower warns). It also caps one node's say in the mean.
- ``secagg-timeout``: seconds to wait for each stage's replies (0: until Flower declares
  unresponsive nodes unavailable, which is how dropouts end a stage in deployment).

Deployed, the four stages exchange messages through the coordinator's
:class:`~fedmed.server.polling_grid.PollingGrid`: Flower's deployed grid looks for replies
only every 3 s, a wait SecAgg+ would pay four times per round where plain FedAvg pays it
once (see docs/operator-guide.md, Performance).
"""

from __future__ import annotations

from flwr.common import Context
from flwr.server import Grid
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from fedmed.config import FederationConfig


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, surviving nodes that drop before sharing their keys.

    A node masks its vector only with the neighbours whose key shares it received, so a
    node that died before the share-keys stage completed is in nobody's masks and there
    is nothing to remove for it. Flower 1.42 still counts it among the round's sampled
    nodes and, finding none of its shares in the unmask stage, halts the round ("Not
    enough shares to recover secret") — measured here by killing one of three nodes
    during share-keys. After share-keys, only the nodes that shared their keys remain
    sampled; dropouts later in the round are handled by Flower as before.
    """

    def share_keys_stage(self, grid: Grid, context: Context, state: WorkflowState) -> bool:
        super().share_keys_stage(grid, context, state)  # type: ignore[arg-type]
        state.sampled_node_ids = set(state.active_node_ids)
        return self._check_threshold(state)


def count_or_fraction(value: float) -> int | float:
    """Flower's convention: an int is a count, a float a fraction."""
    return int(value) if value > 1 else float(value)


def secagg_workflow(config: FederationConfig) -> DropoutTolerantSecAggPlus | None:
    """The fit workflow of ``config``: SecAgg+ when ``secagg`` is on, else None (plain)."""
    if not config.secagg:
        return None
    return DropoutTolerantSecAggPlus(
        num_shares=count_or_fraction(config.secagg_num_shares),
        reconstruction_threshold=count_or_fraction(config.secagg_threshold),
        clipping_range=config.secagg_clipping_range,
        max_weight=config.secagg_max_weight,
        timeout=config.secagg_timeout or None,
    )
