"""The hospital node's Flower ClientApp (the site itself: ``fedmed.clients.hospital``).

Contract with the coordinator (``fedmed.server.app``):

- Identity. In simulation the node is the ``partition-id``-th site of the
  federation's ``sites``; in deployment its node config names it (``site``,
  ``data-dir``, ``site-home``), and the coordinator, which names nodes by their
  registered key (``fedmed.server.identities``), sends ``registered-site`` and
  ``registered-audit-key`` with every fit: a node that is not that site, or whose site
  home signs with another key, refuses. Its site home (policy, ledger, audit log, key) is
  ``site-home`` or, in simulation, ``fedmed.clients.site_home.default_site_home``.
  The node's memory limit for DP-SGD is its own too: ``max-physical-batch`` in its node
  config, else the federation's (``fedmed.clients.hospital.site_for_context``); it splits
  batches, never the mechanism, so the coordinator neither sends nor sees it.
- ``fit`` receives the global weights and a config with ``run-id``,
  ``server-round``, ``local-epochs``, ``batch-size``, ``steps-per-epoch`` (0: no cap;
  ``fedmed.training.loop.TrainSettings.batch_for``), ``lr``, ``momentum``,
  ``seed``, ``local-norm`` (keep normalisation layers at the site:
  ``fedmed.training.local_norms``), the job's DP request (``fedmed.privacy.job.DPJob`` keys: ``dp``,
  ``dp-epsilon``, ``dp-delta``, ``dp-noise-multiplier``, ``dp-clip-norm``,
  ``dp-accountant``, ``dp-grad-sample-mode``, ``num-rounds``), from Flower's
  FedProx, ``proximal_mu`` (the node MUST then add the proximal term), and, once the
  coordinator has witnessed a head of any site's audit log, ``witnessed-heads``: JSON
  ``{site: {"seq": N, "hash": H}}``, the last head it witnessed per site
  (``fedmed.privacy.reply.encode_witnessed``, ``fedmed.server.witness``). Before
  training the node checks that its own log still holds its witnessed head (a site
  home deleted, reset or restored from an older copy refuses every round; a missing
  home is created only to sign that refusal), then the request against its policy and
  ledger (``fedmed.clients.private_round``). Its reply metrics are a
  :class:`fedmed.privacy.reply.FitReply`, which the coordinator reads back:

  - Accepted: it returns the new weights, the number of training examples and the
    metrics ``site``, ``refused = 0``, ``train-loss``, ``steps``, ``epsilon`` (the
    site's total ε after this round, all runs), ``delta``, ``epsilon-budget``,
    ``accountant``, ``noise-multiplier``, ``sample-rate``, ``clip-norm`` and its
    audit log head (``audit-key``, ``audit-seq``, ``audit-hash``) for the
    coordinator to witness.
  - Refused: it returns the weights it received unchanged, ``num_examples = 0``
    and ``site``, ``refused = 1``, ``reason`` (and ``epsilon``/``delta`` when the
    ledger was readable, and the head of its signed refusal when its log still held
    the witnessed head). The coordinator MUST NOT aggregate such a reply.
- Secure aggregation: when the coordinator runs SecAgg+, its messages carry the
  ``secaggplus_configs`` record and go through Flower's ``secaggplus_mod``
  (``fedmed.clients.secagg``); the node then uploads only its masked, clipped,
  quantized update. The same app serves both kinds of run.
- ``evaluate`` receives ``run-id``, ``server-round``, ``num-rounds`` and ``final-round``;
  it scores the received weights (with the site's own normalisation layers under
  ``local-norm``) on the site's own test split and returns ``site`` plus every metric
  of the task pack. On the final round the node also writes the pack's explanations
  of that model into its site home and returns only their count, folder and any
  error (keys in ``fedmed.clients.explanations``). Test data never leave.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.client import Client, ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import Context

from fedmed.clients.secagg import secagg_when_requested
from fedmed.config import FederationConfig


def make_client_app(
    overrides: Mapping[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """A ClientApp whose run config is Flower's, updated with ``overrides`` (used by fedmed run).

    ``mods`` run inside the SecAgg+ mod, on the plain training reply (tests use one to
    simulate a misbehaving site).
    """
    extra = dict(overrides or {})

    def client_fn(context: Context) -> Client:
        # Imported here, not at the top: SecAgg+'s key-exchange and unmask messages each
        # start a ClientApp process that never gets this far (fedmed.clients.hospital).
        from fedmed.clients.hospital import hospital_client

        config = FederationConfig.from_run_config({**context.run_config, **extra})
        return hospital_client(context, config)

    return ClientApp(client_fn=client_fn, mods=[secagg_when_requested, *mods])


app = make_client_app()
