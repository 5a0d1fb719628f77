"""Tests only: fedmed's hospital ClientApp, except that one site scales its update by 1000.

A malicious or broken node is simulated with a Flower mod around the real node code:
the site named ``poison-site`` in the run config (default ``switzerland``) multiplies
every array of its training reply by 1000 — a model-poisoning attempt the coordinator
must reject (``max-update-norm``) while the round goes on with the other sites.
"""

from __future__ import annotations

from flwr.app import Array
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Context, Message, MessageType

from fedmed.clients.app import make_client_app

SCALE = 1000.0
POISONED_SITE = "switzerland"


def poison(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, ctxt)
    poisoned = ctxt.node_config.get("site") == POISONED_SITE
    if poisoned and msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
        for record in reply.content.array_records.values():
            for key in list(record.keys()):
                record[key] = Array(record[key].numpy() * SCALE)
    return reply


app = make_client_app(mods=[poison])
