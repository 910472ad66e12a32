"""TLS for the sandbox's data channel: AWS hands out `wss://` stream URLs, so the sandbox does too.

Each endpoint start makes a throw-away CA and certificates signed by it (for the loopback address, and
for the AWS API hosts the plugin dials by name); the CA key is never written. Clients are told to trust
`<state>/tls/ca.pem`: the native client through its `ca_file`, the session-manager-plugin (Go) through
SSL_CERT_FILE and HTTPS_PROXY, as a user would behind a TLS-inspecting proxy. Nothing here is used for
a non-sandbox environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

CA_FILE = "tls/ca.pem"
# The sandbox's HTTPS proxy for AWS API hosts (kms.<region>.amazonaws.com for the plugin), one URL.
PROXY_FILE = "tls/aws_api_proxy"


def ca_path(state_dir: Path) -> Path:
    return state_dir / CA_FILE


class SandboxCA:
    """A throw-away CA (its key only in memory) that signs certificates for the sandbox's TLS listeners."""

    def __init__(self, state_dir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.state_dir = state_dir
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastionless sandbox CA")])
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)
        cert = (x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(usage, critical=True)
                .sign(self._key, hashes.SHA256()))
        tls_dir = state_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = ca_path(state_dir).with_suffix(".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, ca_path(state_dir))
        self._contexts: dict[str, ssl.SSLContext] = {}

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server context with a certificate for `host` (an IP address or a DNS name), signed by this CA."""
        if host in self._contexts:
            return self._contexts[host]
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(self._name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self._key, hashes.SHA256()))
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        key_file, cert_file = self.state_dir / "tls" / f"{safe}.key", self.state_dir / "tls" / f"{safe}.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self._contexts[host] = context
        return context
