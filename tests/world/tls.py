"""TLS for the test world: a throw-away CA, and server certificates a client trusts or does not.

Real peers serve https (XNAT behind Tomcat or nginx, every identity provider), so the fault
matrix needs a TLS failure that a real peer produces: the server presents a certificate the
client cannot verify (self-signed, another CA), with the same host and port as before, so the
failure can be switched on and off while the client keeps its configuration. The hub trusts
:attr:`TestCA.ca_path` through its own settings (``xnat_ca_bundle``, oauthenticator's
``http_request_kwargs["ca_certs"]``); nothing is added to the system's trust store.

Every certificate names 127.0.0.1 only (an IP SAN): the test world never leaves loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
_VALIDITY = datetime.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestCA:
    """A CA made for one test run, and two server identities for 127.0.0.1.

    :meth:`server_context` ("trusted"): a certificate this CA signed. ``"untrusted"``: a
    self-signed certificate for the same address, as a server with a replaced or expired
    certificate presents; a client trusting only this CA refuses the handshake.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._ca_key = _key()
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("xnat-oauth test CA"))
            .issuer_name(_name("xnat-oauth test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        #: the PEM bundle a client is told to trust
        self.ca_path = self.directory / "test-ca.pem"
        self.ca_path.write_bytes(_pem_cert(self._ca_cert))
        self._contexts: dict[str, ssl.SSLContext] = {}
        for kind in ("trusted", "untrusted"):
            self._contexts[kind] = self._make_context(kind)

    def _leaf(self, kind: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = _name(f"{LOOPBACK} ({kind})")
        signer_key, issuer = (self._ca_key, self._ca_cert.subject) if kind == "trusted" else (key, subject)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(signer_key, hashes.SHA256())
        )
        return key, cert

    def _make_context(self, kind: str) -> ssl.SSLContext:
        key, cert = self._leaf(kind)
        cert_path = self.directory / f"server-{kind}.pem"
        key_path = self.directory / f"server-{kind}.key"
        cert_path.write_bytes(_pem_cert(cert))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx

    def server_context(self, kind: str = "trusted") -> ssl.SSLContext:
        """The server side of a TLS listener: ``"trusted"`` or ``"untrusted"``."""
        return self._contexts[kind]
