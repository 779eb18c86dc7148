"""A private CA and a server certificate for a federated run's SuperLink (TLS between the
SuperNodes and the SuperLink). Pure functions: the caller decides where the PEMs go.

The CA's key is used once, to sign the server certificate, and then dropped: nothing can sign
another certificate under that CA, so a SuperNode that trusts it trusts this SuperLink only."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any run; a new run of the resource gets new certificates only when the
# SuperLink Service is new (a recreated resource), so the validity covers many runs.
VALIDITY = dt.timedelta(days=825)
# Clocks of the nodes may be behind the operator's.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ServerTLS:
    """PEM-encoded CA certificate, server certificate and the server's private key."""

    ca_cert: bytes
    server_cert: bytes
    server_key: bytes


# The SuperLink starts its ServerApp process itself, which dials the SuperLink on loopback
# (Flower turns a 0.0.0.0 bind into 127.0.0.1) over the same TLS: every SuperLink certificate
# names loopback too. Under `neuraxis run` these are its only names.
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names a client in the cluster may use for a Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "neuraxis"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _subject_alternative_name(host: str) -> x509.GeneralName:
    """An IP address (loopback under `neuraxis run`) or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_server_tls(
    ca_name: str, dns_names: list[str], now: dt.datetime | None = None
) -> ServerTLS:
    """A new CA (`ca_name`) and a server certificate it signs for `dns_names` (DNS names or IP
    addresses; the first is the subject's common name). EC P-256 keys: small, fast, and what
    gRPC accepts."""
    if not dns_names:
        raise ValueError("dns_names: at least one name is needed")
    start = (now or dt.datetime.now(dt.UTC)) - CLOCK_SKEW
    end = start + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name(ca_name)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca_subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_subject_alternative_name(n) for n in dns_names]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServerTLS(
        ca_cert=ca_cert.public_bytes(pem),
        server_cert=server_cert.public_bytes(pem),
        server_key=server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
