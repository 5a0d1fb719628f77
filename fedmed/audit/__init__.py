"""Tamper-evident audit trails: each party's hash-chained, Ed25519-signed JSONL log.

``AuditLog`` appends (``fedmed.audit.log``), ``verify_log``/``verify_tree`` check
offline (``fedmed.audit.verify``), and ``fedmed.audit.report`` turns site homes and
logs into the privacy officer's compliance report.
"""

from fedmed.audit.keys import AuditError
from fedmed.audit.log import AuditLog, Head
from fedmed.audit.verify import LogCheck, verify_log, verify_tree

__all__ = ["AuditError", "AuditLog", "Head", "LogCheck", "verify_log", "verify_tree"]
