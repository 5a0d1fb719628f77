"""Provisioning: file modes, certificate SANs, the key formats Flower reads, adding a site."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedmed.cli import main
from fedmed.deploy.errors import ProvisionError
from fedmed.deploy.kit import (
    find_ca_cert,
    load_coordinator_kit,
    load_site_kit,
)
from fedmed.deploy.pki import certificate_hosts, check_node_private_key, split_address
from fedmed.deploy.provision import add_site, provision, rotate_node_key
from fedmed.privacy.policy import load_policy

SITES = ["a", "b", "c"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    provision(out, "heart", SITES, ["10.1.2.3:9443", "coordinator.example.org"], ("heart",))
    return out


def test_every_private_key_is_0600_and_every_key_folder_0700(federation: Path) -> None:
    private = [
        federation / "ca" / "ca.key",
        federation / "coordinator" / "coordinator.key",
        federation / "coordinator" / "keys" / "audit-ed25519.pem",
    ]
    for site in SITES:
        private += [
            federation / "sites" / site / "node-auth.key",
            federation / "sites" / site / "keys" / "audit-ed25519.pem",
        ]
    for path in private:
        assert _mode(path) == 0o600, path
        assert _mode(path.parent) == 0o700, path.parent
    for path in federation.rglob("*"):  # nothing private is group/world readable elsewhere
        if path.is_file() and path.suffix in (".key", ".pem") and "ed25519.pub" not in path.name:
            assert _mode(path) & 0o077 == 0, path


def test_coordinator_certificate_names_the_addresses_and_chains_to_the_ca(
    federation: Path,
) -> None:
    kit = load_coordinator_kit(federation)  # the root resolves to coordinator/
    assert kit.addresses == ("10.1.2.3:9443", "coordinator.example.org:9092")
    cert_pem = kit.cert.read_bytes()
    assert sorted(certificate_hosts(cert_pem)) == ["10.1.2.3", "coordinator.example.org"]
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(kit.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca


def test_default_addresses_are_loopback(tmp_path: Path) -> None:
    provision(tmp_path / "fed", "heart", ["a"])
    hosts = certificate_hosts(load_coordinator_kit(tmp_path / "fed").cert.read_bytes())
    assert sorted(hosts) == ["127.0.0.1", "localhost"]


def test_node_keys_are_openssh_ec_keys_that_flower_loads(federation: Path) -> None:
    kit = load_coordinator_kit(federation)
    assert sorted(kit.node_keys()) == SITES
    for site in SITES:
        site_kit = load_site_kit(federation / "sites" / site)
        assert site_kit.site == site and site_kit.federation == "heart"
        check_node_private_key(site_kit.node_key)  # what flower-supernode accepts
        private = serialization.load_ssh_private_key(site_kit.node_key.read_bytes(), None)
        public = serialization.load_ssh_public_key(kit.node_keys()[site].read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey)  # `flwr supernode register`
        assert private.public_key().public_numbers() == public.public_numbers()
        assert site_kit.node_pub.read_bytes() == kit.node_keys()[site].read_bytes()


def test_site_kit_has_its_ca_audit_key_and_a_policy_template(federation: Path) -> None:
    ca = (federation / "ca" / "ca.crt").read_bytes()
    for site in SITES:
        folder = federation / "sites" / site
        assert (folder / "ca.crt").read_bytes() == ca
        key = serialization.load_pem_private_key(
            (folder / "keys" / "audit-ed25519.pem").read_bytes(), None
        )
        assert key.__class__.__name__.startswith("Ed25519")
        assert load_policy(folder / "policy.toml").allowed_tasks == ("heart",)
    assert find_ca_cert(federation / "sites" / "a") == (federation / "sites" / "a" / "ca.crt")


def test_adding_a_site_reissues_nothing(federation: Path) -> None:
    files = [p for p in federation.rglob("*") if p.is_file() and p.name != "federation.toml"]
    before = {p: p.read_bytes() for p in files}
    add_site(federation, "d")
    for path, content in before.items():
        assert path.read_bytes() == content, path
    assert sorted(load_coordinator_kit(federation).node_keys()) == [*SITES, "d"]
    assert load_site_kit(federation / "sites" / "d").site == "d"
    with pytest.raises(ProvisionError, match="already provisioned"):
        add_site(federation, "d")


def test_rotating_a_key_replaces_only_that_sites_node_key(federation: Path) -> None:
    old = (federation / "sites" / "a" / "node-auth.pub").read_bytes()
    other = (federation / "sites" / "b" / "node-auth.pub").read_bytes()
    audit = (federation / "sites" / "a" / "keys" / "audit-ed25519.pem").read_bytes()
    rotate_node_key(federation, "a")
    new = (federation / "sites" / "a" / "node-auth.pub").read_bytes()
    assert new != old
    assert (federation / "coordinator" / "node-keys" / "a.pub").read_bytes() == new
    assert (federation / "sites" / "b" / "node-auth.pub").read_bytes() == other
    assert (federation / "sites" / "a" / "keys" / "audit-ed25519.pem").read_bytes() == audit
    check_node_private_key(federation / "sites" / "a" / "node-auth.key")


def test_provision_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    provision(tmp_path / "fed", "heart", ["a"])
    with pytest.raises(ProvisionError, match="--add-site"):
        provision(tmp_path / "fed", "heart", ["a"])
    with pytest.raises(ProvisionError, match="site name"):
        provision(tmp_path / "bad", "heart", ["A B"])
    with pytest.raises(ProvisionError, match="twice"):
        provision(tmp_path / "twice", "heart", ["a", "a"])


def test_a_readable_node_key_is_refused(federation: Path) -> None:
    key = federation / "sites" / "a" / "node-auth.key"
    key.chmod(0o644)
    with pytest.raises(ProvisionError, match="chmod 600"):
        check_node_private_key(key)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("h:1", ("h", 1)), ("[::1]:9092", ("::1", 9092)), ("10.0.0.1", ("10.0.0.1", None))],
)
def test_split_address(address: str, expected: tuple[str, int | None]) -> None:
    assert split_address(address) == expected


def test_provision_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fed"
    assert main(["provision", "--federation", "heart", "--sites", "a,b", "--out", str(out)]) == 0
    assert main(["provision", "--add-site", "c", "--out", str(out)]) == 0
    assert "node key SHA256:" in capsys.readouterr().out
    assert main(["provision", "--add-site", "c", "--out", str(out)]) == 2
    assert "already provisioned" in capsys.readouterr().err
