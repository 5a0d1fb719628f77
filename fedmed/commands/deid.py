"""``fedmed deid``: the de-identification commands, with ``scrub`` signing its batches.

The commands live in :mod:`fedmed.deid.cli`, which may import only ``fedmed.errors`` and
``fedmed.state`` (``fedmed.deid`` runs alone at a hospital: docs/architecture.md § Layout
and layers), so it cannot open a site's audit log. This layer can: it hands ``scrub`` a
signer for its ``--site-home``, so a scrub into a home made by ``fedmed site init`` or a
node leaves one signed ``deid-batch`` entry per run, as the node's admission stage does
(docs/auditor-guide.md §9). A folder without a site audit log gets no signer, and ``scrub``
says its batch was not signed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmed.clients.site_home import SiteHome
from fedmed.deid import cli as deid_cli


def site_home_signer(site_home: Path) -> Callable[[dict[str, Any]], object] | None:
    """The signer of ``site_home``'s audit log (a ``deid-batch`` entry per batch report,
    under the home's lock), or None when the folder holds no site audit log."""
    home = SiteHome.with_audit_log(site_home)
    return home.sign_deid_batch if home is not None else None


def register(subparsers: argparse._SubParsersAction) -> None:
    deid_cli.register(subparsers, scrub_signer=site_home_signer)
