"""The coordinator's witness record: the last audit-log head it saw from each site.

A site's audit log only grows. The coordinator remembers, per federation, the head
(``key``, ``seq``, ``hash``) each site last reported — of a release or a signed
refusal (:meth:`fedmed.privacy.reply.FitReply.audit_head`)
and sends it back with every round's fit config (:data:`fedmed.privacy.reply.WITNESSED_HEADS`).
A node whose log no longer holds that head — the site home was deleted, reset, or
restored from an older copy — refuses to train (``fedmed.clients.private_round``), so
its ε never silently restarts at zero.

The record is a JSON file in the coordinator home (:func:`fedmed.state.witness_record_path`;
in simulation ``<state>/coordinator``, so a second ``fedmed run`` of the same federation
sees the first), rewritten durably after every round that carried a head. An unreadable
record stops the run: sending no witness would let every reset site train.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmed.errors import ConfigError
from fedmed.outputs import write_bytes_durable
from fedmed.privacy.reply import WITNESSED_HEADS, encode_witnessed


class WitnessRecord:
    """The heads witnessed for one federation's sites, kept in ``path``."""

    def __init__(self, path: Path, federation: str, sites: Mapping[str, Mapping[str, Any]]):
        self.path = Path(path)
        self.federation = federation
        self.sites: dict[str, dict[str, Any]] = {s: dict(h) for s, h in sites.items()}

    @classmethod
    def load(cls, path: Path, federation: str) -> WitnessRecord:
        """The record at ``path`` (empty if there is none yet); ConfigError if unreadable."""
        path = Path(path)
        if not path.exists():
            return cls(path, federation, {})
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            sites = document["sites"]
            if not isinstance(sites, dict) or document.get("federation") != federation:
                raise ValueError(f"not the witness record of federation {federation!r}")
            for site, head in sites.items():
                if not isinstance(head.get("seq"), int) or not isinstance(head.get("hash"), str):
                    raise ValueError(f"site {site!r} has no seq and hash")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{path}: the coordinator's witness record is unreadable ({exc}); restore it "
                "from a backup — without it a site whose home was reset would train from ε 0"
            ) from None
        return cls(path, federation, sites)

    def fit_config(self) -> dict[str, str]:
        """The fit-config entry that tells each site the head last witnessed for it."""
        return {WITNESSED_HEADS: encode_witnessed(self.sites)} if self.sites else {}

    def conflict(self, site: str, head: Mapping[str, Any]) -> str | None:
        """Why ``head`` (``{key, seq, hash}``) cannot follow the head witnessed for ``site``:
        another audit key (a replaced home or key), or a log that went back (an older
        copy, or another branch at the same seq). None when it can (or nothing was seen)."""
        known = self.sites.get(site)
        if known is None:
            return None
        if known.get("key") is not None and head.get("key") != known["key"]:
            return (
                f"{site}'s audit log is now signed by key {head.get('key')}, but the coordinator "
                f"witnessed key {known['key']} (round {known.get('round')} of run "
                f"{known.get('run')}): the site home or its key was replaced"
            )
        seq, digest = int(head["seq"]), str(head["hash"])
        if seq < known["seq"] or (seq == known["seq"] and digest != known["hash"]):
            return (
                f"{site}'s audit log head is seq {seq}, but the coordinator witnessed seq "
                f"{known['seq']} (hash {known['hash']}): the log went back or forked"
            )
        return None

    def witness(self, heads: Mapping[str, Mapping[str, Any]], run: str, server_round: int) -> None:
        """Remember ``heads`` (site → ``{key, seq, hash}``) and write the record durably."""
        if not heads:
            return
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for site, head in heads.items():
            self.sites[site] = {
                "key": head.get("key"),
                "seq": int(head["seq"]),
                "hash": str(head["hash"]),
                "run": run,
                "round": server_round,
                "time": when,
            }
        document = {"federation": self.federation, "sites": dict(sorted(self.sites.items()))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_durable(self.path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
