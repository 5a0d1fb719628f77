"""The deployment mistakes an operator makes, each a one-line :class:`FedmedError`.

Each is detected from something observable — a failed bind, a refused or
unverifiable TLS handshake, a Flower exit code or log line — within a timeout, so
a command never hangs on a mistake and never shows a traceback for one.
"""

from __future__ import annotations

from fedmed.errors import FedmedError


class DeployError(FedmedError):
    """Something about a coordinator or node process is wrong."""


class ProvisionError(DeployError):
    """A startup kit cannot be written or read (existing files, bad names, bad keys)."""


class PortInUse(DeployError):
    """The address a process must listen on is taken by another program."""


class CoordinatorUnreachable(DeployError):
    """Nothing answers at the coordinator address (down, wrong address, or a firewall)."""


class WrongCertificate(DeployError):
    """TLS failed: the kit's CA did not sign the coordinator's certificate, or the
    address dialled is not one the certificate names."""


class NodeNotRegistered(DeployError):
    """The coordinator does not know this node's public key."""


class ProcessFailed(DeployError):
    """A Flower process exited unexpectedly; the message quotes its last words."""
