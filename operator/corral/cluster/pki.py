"""Certificates and keys for the local control plane: one CA, serving and client certs.

Clients authenticate with certificates whose CN is the user and O the groups, as the
API server's x509 authenticator reads them (so `system:masters` makes an admin).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class ClientIdentity:
    filename: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = ClientIdentity("admin", "corral-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("scheduler", "system:kube-scheduler")
APISERVER_KUBELET_CLIENT = ClientIdentity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)
CLIENTS = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, APISERVER_KUBELET_CLIENT)

APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Pki:
    """Creates (once) and locates every certificate of the cluster under one folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca_cert(self) -> Path:
        return self.path("ca.crt")

    def cert(self, stem: str) -> Path:
        return self.path(f"{stem}.crt")

    def key(self, stem: str) -> Path:
        return self.path(f"{stem}.key")

    def ensure(self, apiserver_ips: tuple[str, ...]) -> None:
        """Create whatever is missing; existing files are kept so clients stay valid."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.ca_cert.exists() and self.key("ca").exists()):
            self._create_ca()
        ca_key = serialization.load_pem_private_key(self.key("ca").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        if not self.cert("apiserver").exists():
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_DNS_NAMES]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in apiserver_ips]
            self._issue(
                "apiserver", _name("kube-apiserver"), sans, server=True, ca=(ca_cert, ca_key)
            )
        for client in CLIENTS:
            if not self.cert(client.filename).exists():
                subject = _name(client.user, client.groups)
                self._issue(client.filename, subject, [], server=False, ca=(ca_cert, ca_key))
        if not self.key("service-account").exists():
            sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.key("service-account"), sa_key)
            self.path("service-account.pub").write_bytes(
                sa_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def ensure_client(self, client: ClientIdentity) -> None:
        """A client certificate for an identity outside CLIENTS (e.g. a node's kubelet)."""
        if self.cert(client.filename).exists():
            return
        ca_key = serialization.load_pem_private_key(self.key("ca").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        subject = _name(client.user, client.groups)
        self._issue(client.filename, subject, [], server=False, ca=(ca_cert, ca_key))

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = _name("corral-local-ca")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY * 10)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key("ca"), key)
        _write_cert(self.ca_cert, cert)

    def _issue(
        self,
        stem: str,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        *,
        server: bool,
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    ) -> None:
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        _write_key(self.key(stem), key)
        _write_cert(self.cert(stem), builder.sign(ca_key, hashes.SHA256()))
