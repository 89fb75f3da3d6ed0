"""Startup kits for a real deployment: one folder per party, holding only what that party may hold.

Server kit::

    ca.crt                     the consortium's TLS root (the CA key is not kept: re-provision to add parties)
    server.crt, server.key     the SuperLink's TLS certificate (SANs: the server host, localhost, 127.0.0.1)
    allowlist.json             every client's Ed25519 public key
    node-keys/<id>.pub         every client's Flower node-authentication public key (OpenSSH ECDSA)
    kit.json                   what the kit is for: clients, server host and port

Client kit ``client-<id>``::

    ca.crt                     to check the SuperLink's certificate
    allowlist.json             every client's Ed25519 public key (to check its peers in the key ceremony and the
                               updates it helps decrypt)
    policy.json                its privacy policy
    kit.json                   its client id, data partition and the server's address
    apps.json                  the SHA-256 of the app (Flower FAB) the operator runs: the only app its device runs
    trust.json                 (written by ``fedproof server start`` once the ledger exists) the pinned chain,
                               genesis hash, contract and operator deployment key

Keys are made where they are used. Each device runs ``fedproof client init``, which writes its identity
(``signing.pem``: Ed25519; ``node.key``: Flower's node-authentication key) and a public ``identity.json`` it sends
to the operator; ``provision --identity`` takes those public identities in, so no kit and no operator ever holds a
client's private key. (Without identities, provision still generates the keys itself and puts them in the client
kits, for trying the deployment on one machine: then the operator could sign as any client, and it says so.)
No kit holds CKKS key material: the clients generate the run's threshold key among themselves at the start of
each run (privacy.keygen), each keeping its own share on its device. Key material is written 0600; an existing
kit is never overwritten without ``force``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedproof.base.errors import ConfigError
from fedproof.base.files import write_atomically
from fedproof.core.keys import CLIENT_KEYS, KeySet, init_key_set
from ledger.signing import SigningKey
from ledger.verification import AllowList
from privacy.policy import PrivacyPolicy

KIT = "kit.json"
POLICY = "policy.json"
"""A client kit's privacy policy (privacy.policy.PrivacyPolicy): what its device allows, whatever a run asks."""


@dataclass(frozen=True)
class Kits:
    server: Path
    clients: dict[str, Path]


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificates(host: str, days: int) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a server certificate + key it signed, valid for ``host``, localhost and 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedproof consortium CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return (ca.public_bytes(serialization.Encoding.PEM), server.public_bytes(serialization.Encoding.PEM),
            _pem_key(server_key))


def node_key_pair() -> tuple[bytes, bytes]:
    """A Flower SuperNode identity: ECDSA P-384, private and public key in OpenSSH format (as Flower expects)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


IDENTITY = "identity.json"
PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Identity:
    """A device's public identity, as ``fedproof client init`` writes it for the operator."""

    client_id: str
    signing_key: bytes
    """Ed25519 public key (32 bytes)."""
    node_key: bytes
    """Flower node-authentication public key (OpenSSH line)."""

    @classmethod
    def load(cls, path: Path) -> Identity:
        path = Path(path)
        path = path / IDENTITY if path.is_dir() else path
        try:
            doc = json.loads(path.read_text())
            identity = cls(str(doc["client_id"]), bytes.fromhex(doc["signing_key"]), doc["node_key"].encode())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a fedproof client identity ({exc}); make one with `fedproof client init`") from exc
        if len(identity.signing_key) != 32 or not identity.node_key.startswith(b"ecdsa-sha2-"):
            raise ConfigError(f"{path}: needs a 32-byte Ed25519 key and an OpenSSH ECDSA node key")
        KeySet(Path(".")).signing_key(identity.client_id)  # a plain name: it names files
        return identity


def client_init(out: Path, client_id: str, force: bool = False) -> Identity:
    """On the device: make its signing key and node key, keep them here (0600), write the public identity.json."""
    out = Path(out)
    if (out / "signing.pem").exists() and not force:
        raise ConfigError(f"{out} already holds this device's keys; pass --force to replace them (the operator must "
                          "then register the new identity)")
    KeySet(out).signing_key(client_id)  # refuses ids that cannot name a file
    signing = SigningKey.generate()
    private, public = node_key_pair()
    write_atomically(out / "signing.pem", signing.to_pem(), private=True)
    write_atomically(out / "node.key", private, private=True)
    write_atomically(out / "node.pub", public)
    identity = Identity(client_id, signing.public_key, public.strip())
    write_atomically(out / IDENTITY, json.dumps({"client_id": client_id, "signing_key": signing.public_key.hex(),
                                                 "node_key": public.decode().strip()}, indent=2).encode())
    return identity


def app_hashes(app: Path | None = None) -> list[str]:
    """The FAB hash of the app the operator will run (``flwr build`` of ``app``, default this project: deterministic,
    the same bytes ``flwr run`` submits)."""
    from flwr.cli.build import build_fab_from_disk

    return [hashlib.sha256(build_fab_from_disk(Path(app or PROJECT))).hexdigest()]


def provision(out: Path, clients: int, server_host: str, port: int = 9092, force: bool = False,
              days: int = 365, partition: str = "dirichlet", policy: PrivacyPolicy | None = None,
              declared_examples: int = 0, identities: list[Identity] | None = None,
              apps: list[str] | None = None) -> Kits:
    """Write a server kit and ``clients`` client kits under ``out``; each client kit holds ``policy`` (default: the
    strict one) as its own ``policy.json``, which its device reads and the server cannot override. With
    ``declared_examples``, every client's aggregation weight is registered in the allow-list and its kit: it
    weighs its updates with it, and the server refuses any claim above it."""
    policy = policy or PrivacyPolicy()
    out = Path(out)
    if clients < 1 and not identities:
        raise ConfigError("provision at least one client")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out} already holds kits: refusing to overwrite keys (pass --force to replace them)")
        shutil.rmtree(out)
    ids = [x.client_id for x in identities] if identities else [str(i) for i in range(clients)]
    if len(set(ids)) != len(ids):
        raise ConfigError("two identities carry the same client id")
    clients = len(ids)
    pinned = json.dumps({"apps": apps if apps is not None else app_hashes()}, indent=2).encode()
    ca, server_crt, server_key = _certificates(server_host, days)
    server = out / "server"
    weights = {i: declared_examples for i in ids} if declared_examples else {}
    with tempfile.TemporaryDirectory() as tmp:
        if identities:  # the devices' own public keys: nobody here holds a client's private key
            allow = AllowList({x.client_id: x.signing_key for x in identities}).with_weights(weights)
            node_keys = {x.client_id: (None, x.node_key + b"\n") for x in identities}
            signing_keys: dict[str, bytes] = {}
        else:
            keys = init_key_set(Path(tmp), ids, weights=weights or None)
            allow = AllowList.load(keys.allowlist)
            node_keys = {i: node_key_pair() for i in ids}
            signing_keys = {i: keys.signing_key(i).read_bytes() for i in ids}
        write_atomically(server / "ca.crt", ca)
        write_atomically(server / "server.crt", server_crt)
        write_atomically(server / "server.key", server_key, private=True)
        write_atomically(server / "allowlist.json", allow.to_json().encode(), private=True)
        client_dirs = {}
        for n, i in enumerate(ids):
            kit = out / f"client-{i}"
            private, public = node_keys[i]
            write_atomically(kit / "ca.crt", ca)
            if private is not None:  # generated here: for one-machine trials only
                write_atomically(kit / "node.key", private, private=True)
                write_atomically(kit / "node.pub", public)
                write_atomically(kit / CLIENT_KEYS / f"{i}.pem", signing_keys[i], private=True)
            write_atomically(server / "node-keys" / f"{i}.pub", public)
            write_atomically(kit / "allowlist.json", allow.to_json().encode())  # public: to check its peers
            write_atomically(kit / POLICY, policy.to_json().encode())
            write_atomically(kit / "apps.json", pinned)
            write_atomically(kit / KIT, json.dumps({"role": "client", "client_id": i, "partition_id": n,
                                                    "num_partitions": clients, "partition": partition,
                                                    "declared_examples": declared_examples,
                                                    "server": f"{server_host}:{port}"}, indent=2).encode())
            client_dirs[i] = kit
    write_atomically(server / KIT, json.dumps({"role": "server", "clients": clients, "host": server_host,
                                               "port": port}, indent=2).encode())
    return Kits(server, client_dirs)


def read_kit(kit: Path, role: str) -> dict:
    try:
        doc = json.loads((Path(kit) / KIT).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{kit} is not a fedproof startup kit ({exc}); make kits with `fedproof provision`") from exc
    if doc.get("role") != role:
        raise ConfigError(f"{kit} is a {doc.get('role')} kit, not a {role} kit")
    return doc
