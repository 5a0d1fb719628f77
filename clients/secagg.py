"""The node's side of secure aggregation (SecAgg+), switched on by the coordinator.

One ClientApp serves runs with and without SecAgg+: the coordinator's SecAgg+
workflow (``fedmed.server.secagg``) puts the ``secaggplus_configs`` record into every
message of the protocol, and only those messages go through Flower's
``secaggplus_mod``. Plain training and evaluation messages pass straight to the node,
so a site does not need a second app (or a restart) to join a secure-aggregation run.
"""

from __future__ import annotations

from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS


def secagg_when_requested(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Flower's SecAgg+ mod for SecAgg+ messages; every other message unchanged."""
    if RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)
