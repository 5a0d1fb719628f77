"""Check a coordinator address before handing it to Flower, for one-line diagnoses.

``flower-supernode`` reports an unreachable coordinator as an endless
"Connection attempt failed, retrying" and a TLS problem as a long exit notice. A
TLS handshake made here with the kit's CA tells the three cases apart in seconds:
nothing listening (or a firewall dropping packets), a certificate the kit's CA did
not sign, and an address the certificate does not name.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from fedmed.deploy.errors import CoordinatorUnreachable, WrongCertificate
from fedmed.deploy.pki import split_address

HOSTNAME_MISMATCH = ("mismatch", "doesn't match", "does not match")


def probe_coordinator(address: str, ca_cert: Path, timeout: float = 5.0) -> None:
    """Return if ``address`` completes a TLS handshake verified by ``ca_cert``; else raise."""
    host, port = split_address(address)
    if port is None:
        raise CoordinatorUnreachable(f"coordinator address {address!r} has no port (host:port)")
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return
    except ssl.SSLCertVerificationError as exc:
        detail = exc.verify_message or str(exc)
        if any(token in detail.lower() for token in HOSTNAME_MISMATCH):
            raise WrongCertificate(
                f"the coordinator's certificate does not name {host!r} ({detail}); dial one of "
                "the addresses given to fedmed provision, or re-provision with --address"
            ) from None
        raise WrongCertificate(
            f"the coordinator at {address} presented a certificate that {ca_cert} did not sign "
            f"({detail}): wrong kit for this federation, or the wrong coordinator"
        ) from None
    except ssl.SSLError as exc:
        raise WrongCertificate(
            f"TLS handshake with {address} failed ({exc.reason or exc}); is it a fedmed "
            "coordinator started with TLS?"
        ) from None
    except ConnectionRefusedError:
        raise CoordinatorUnreachable(
            f"coordinator unreachable at {address}: connection refused (is `fedmed coordinator "
            "start` running there, on this port?)"
        ) from None
    except TimeoutError:
        raise CoordinatorUnreachable(
            f"coordinator unreachable at {address}: no answer in {timeout:.0f} s (address, "
            "route or firewall)"
        ) from None
    except socket.gaierror as exc:
        raise CoordinatorUnreachable(
            f"coordinator unreachable: cannot resolve {host!r} ({exc.strerror})"
        ) from None
    except OSError as exc:
        raise CoordinatorUnreachable(f"coordinator unreachable at {address}: {exc}") from None
