"""Generate the credentials of a TLS + SuperNode-authenticated Flower deployment, offline.

Uses only the ``cryptography`` package (no openssl binary, no download):

- ``certificates/ca.crt``                a self-signed CA (RSA 2048, 1 year, CA:TRUE); its private
  key signs the server certificate and is then discarded — it never lands in the deployment
  directory (``ca_key=PATH`` keeps it elsewhere, for signing more certificates later);
- ``certificates/server.pem``, ``server.key``  the SuperLink's TLS certificate signed by that CA,
  subjectAltName = the given hosts (default IP 127.0.0.1 and DNS localhost), serverAuth;
- ``keys/supernode_credentials_<i>`` / ``.pub``  one ECDSA P-384 key pair per SuperNode, private
  key in OpenSSH format (``flower-supernode --auth-supernode-private-key``), public key in OpenSSH
  format (``flwr supernode register <file.pub> <connection>``).

Private keys are created with mode 0600 (never readable by others, not even for an instant), in
directories of mode 0700. Usage::

    python -m fedshield.server.deploy.credentials OUT_DIR --supernodes 3 [--host 127.0.0.1] \
        [--ca-key ~/.fedshield/ca.key]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    supernode_keys: list[Path]  # private keys; the public key is the same path + ".pub"


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
    if not private:
        path.write_bytes(data)
        return path
    path.unlink(missing_ok=True)  # O_EXCL below: a new inode, created 0600 from the start
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedshield"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(out_dir: str | os.PathLike[str], num_supernodes: int, *,
             hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365,
             ca_key: str | os.PathLike[str] | None = None) -> Credentials:
    """Write the CA certificate, the server certificate and key and ``num_supernodes`` SuperNode
    key pairs under ``out_dir``; the CA's private key only to ``ca_key`` (outside ``out_dir``)."""
    if num_supernodes < 0:
        raise ValueError(f"num_supernodes must be >= 0, got {num_supernodes}")
    if not hosts:
        raise ValueError("hosts must name at least one IP address or DNS name")
    out = Path(out_dir)
    if ca_key is not None and Path(ca_key).resolve().is_relative_to(out.resolve()):
        raise ValueError(f"ca_key {str(ca_key)!r} must live outside the deployment directory")
    certs = out / "certificates"
    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("fedshield test CA"))
        .issuer_name(_name("fedshield test CA")).public_key(signing_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(signing_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(certs / "ca.crt", ca_cert.public_bytes(pem))
    if ca_key is not None:
        _write(Path(ca_key), _pem_key(signing_key), private=True)
    _write(certs / "server.pem", server_cert.public_bytes(pem))
    _write(certs / "server.key", _pem_key(server_key), private=True)
    keys = [supernode_keypair(out / "keys" / f"supernode_credentials_{i + 1}")
            for i in range(num_supernodes)]
    return Credentials(certs / "ca.crt", certs / "server.pem", certs / "server.key", keys)


def supernode_keypair(path: str | os.PathLike[str]) -> Path:
    """One ECDSA P-384 SuperNode key pair: ``path`` (OpenSSH private), ``path.pub`` (OpenSSH)."""
    key = ec.generate_private_key(ec.SECP384R1())
    path = Path(path)
    _write(path, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True)
    _write(path.with_name(path.name + ".pub"), key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedshield.server.deploy.credentials",
                                     description="TLS certificates and SuperNode keys, offline")
    parser.add_argument("out_dir")
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--host", action="append", dest="hosts",
                        help="IP or DNS name for the server certificate (repeatable)")
    parser.add_argument("--ca-key", help="keep the CA's private key here (outside OUT_DIR); "
                        "by default it is discarded after signing")
    args = parser.parse_args(argv)
    creds = generate(args.out_dir, args.supernodes, hosts=tuple(args.hosts or DEFAULT_HOSTS),
                     ca_key=args.ca_key)
    print(f"CA {creds.ca_cert}\nserver {creds.server_cert} {creds.server_key}")
    for key in creds.supernode_keys:
        print(f"supernode {key} {key}.pub")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
