"""Identities, canonical bytes and signatures: everything fedproof hashes or signs is encoded here, and only here.

Clients sign with Ed25519 (pyca/cryptography). What they sign is a fixed binary layout, never JSON, so there is
exactly one byte string per update (all integers big-endian, strings UTF-8 with a u16 length prefix)::

    "fedproof/update/v2" 0x00
    chain id            u64     \\
    genesis block hash  32 B     |  where the round is recorded: a signature cannot be replayed on another
    contract address    20 B     |  chain (every fresh anvil has chain id 31337 and the same first contract
    run id              str      |  address, but its own genesis hash), contract or run ...
    round               u64     /   ... or in another round
    client id           str
    payload SHA-256     32 B        of the exact bytes sent (ciphertexts, or plaintext arrays), see payload_digest
    example count       u64
    epsilon spent       u64         ceil(epsilon * 1e6); 2^64 - 1 when the client trains without DP
    parent model hash   32 B        SHA-256 of the model file the client trained from (model_file_bytes)

Every other statement (a key-ceremony step, a key statement, a reveal, a partial decryption, a model
co-signature) is signed the same way under its own tag, with the example count 0 and its payload digest over
what it vouches for. A model co-signature (``fedproof/model/v2``) covers :func:`model_statement_chunks`: the
parent and new model hashes, the Merkle root and count of the round's leaves, and the digest of the run's key
statement (``fedproof/key/v1``, :func:`key_statement_chunks`, signed by every key holder and recorded on chain):
t and the holders are read there, never from a round's bundle.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from safetensors.numpy import save as safetensors_bytes

from fedproof.base.files import read_bounded
from ledger.errors import BadSignature, KeyFileError

UPDATE_TAG = b"fedproof/update/v2"
KEYGEN_TAG, PARTIAL_TAG = b"fedproof/keygen/v2", b"fedproof/partial-decryption/v2"
"""Threshold HE: a key-ceremony step (``round`` is the step, 1..3) and a partial decryption of a round's sum."""
MODEL_TAG = b"fedproof/model/v2"
"""A client's co-signature of a round's new model: it fused the partial decryptions itself and got this hash."""
KEY_TAG = b"fedproof/key/v1"
"""A key holder's signature of the run's key statement (:func:`key_statement_chunks`): the joint key it computed
itself, its threshold, its holders and the weight scale every encryption and co-signature of the run uses."""
REVEAL_TAG = b"fedproof/reveal/v1"
MANIFEST_TAG = b"fedproof/deployment/v2"
"""An operator's deployment manifest (:mod:`ledger.manifest`); its layout is :func:`manifest_bytes`."""
RELEASE_TAG = b"fedproof/release/v1"
"""An operator's release statement (:mod:`ledger.release`); its layout is :func:`release_bytes`."""
"""A contributor's signature, as it reveals its ciphertexts, over the round's frozen set of signed commitments
(the Merkle root of the round's leaves): it reveals once per round, to that set only."""
ZERO_HASH = bytes(32)
PAYLOAD_DOMAIN = b"fedproof/payload/v1\x00"
NO_DP = 2**64 - 1
EPSILON_SCALE = 1_000_000
_MAX_KEY_FILE = 4096


def payload_digest(chunks: Iterable[bytes]) -> bytes:
    """SHA-256 over a domain tag and every chunk, each prefixed by its length (u64), so that no two different
    chunkings of the same bytes hash alike."""
    h = hashlib.sha256(PAYLOAD_DOMAIN)
    for chunk in chunks:
        h.update(struct.pack(">Q", len(chunk)))
        h.update(chunk)
    return h.digest()


def scale_epsilon(epsilon: float | None) -> int:
    """Epsilon as the integer that is signed and stored on chain: micro-epsilon, rounded up (never understated)."""
    if epsilon is None:
        return NO_DP
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite non-negative number, got {epsilon!r}")
    return min(math.ceil(epsilon * EPSILON_SCALE), NO_DP - 1)


def unscale_epsilon(scaled: int) -> float | None:
    """The epsilon a signed field states (None: the signer trained without DP)."""
    return None if scaled == NO_DP else scaled / EPSILON_SCALE


def client_id_hash(client_id: str) -> bytes:
    """The 32-byte id a client has on chain."""
    return hashlib.sha256(b"fedproof/client/v1\x00" + client_id.encode()).digest()


def run_id_hash(run_id: str) -> bytes:
    """The 32-byte id a run has on chain."""
    return hashlib.sha256(b"fedproof/run/v1\x00" + run_id.encode()).digest()


def length_prefixed(value: str) -> bytes:
    """A string as every canonical encoding here writes it: UTF-8 with a u16 length prefix."""
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("identifier too long to encode")
    return struct.pack(">H", len(raw)) + raw


@dataclass(frozen=True)
class SignedFields:
    """What a client vouches for with one signature (see the module docstring for the byte layout)."""

    chain_id: int
    contract: bytes
    run_id: str
    round: int
    client_id: str
    payload_sha256: bytes
    num_examples: int
    epsilon_scaled: int = NO_DP
    tag: bytes = UPDATE_TAG
    genesis: bytes = ZERO_HASH
    """The chain's genesis block hash (zeros without a ledger)."""
    parent_model_hash: bytes = ZERO_HASH
    """An update: the model it was trained from. Other statements: zeros."""

    def __post_init__(self) -> None:
        if len(self.contract) != 20 or len(self.payload_sha256) != 32:
            raise ValueError("contract must be 20 bytes and payload_sha256 32 bytes")
        if len(self.genesis) != 32 or len(self.parent_model_hash) != 32:
            raise ValueError("genesis and parent_model_hash must be 32 bytes")
        if self.tag not in (UPDATE_TAG, KEYGEN_TAG, PARTIAL_TAG, MODEL_TAG, KEY_TAG, REVEAL_TAG):
            raise ValueError(f"unknown signing tag {self.tag!r}")

    def canonical_bytes(self) -> bytes:
        return b"".join(
            [
                self.tag + b"\x00",
                struct.pack(">Q", self.chain_id),
                self.genesis,
                self.contract,
                length_prefixed(self.run_id),
                struct.pack(">Q", self.round),
                length_prefixed(self.client_id),
                self.payload_sha256,
                struct.pack(">QQ", self.num_examples, self.epsilon_scaled),
                self.parent_model_hash,
            ]
        )


def model_file_bytes(tensors: Mapping[str, np.ndarray], run_id: str) -> bytes:
    """A model as the lineage stores and hashes it: safetensors (no pickle), the run id as metadata. One byte
    string per model, so a client computes the hash of the model it was sent, and of the model a round should
    produce, exactly as the server writes the file."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    # one metadata key only: safetensors keeps metadata in a Rust HashMap, so two keys come out in either order
    return safetensors_bytes(arrays, metadata={"fedproof/model/v1 run_id": run_id})


def model_hash(tensors: Mapping[str, np.ndarray], run_id: str) -> bytes:
    return hashlib.sha256(model_file_bytes(tensors, run_id)).digest()


def model_statement_chunks(parent: bytes, model: bytes, merkle_root: bytes, leaves: int, key_sha256: bytes
                           ) -> list[bytes]:
    """What a model co-signature vouches for: this round turned ``parent`` into ``model`` from exactly the
    ``leaves`` signed updates under ``merkle_root``, decrypted under the key whose statement hashes to
    ``key_sha256`` (its threshold and holders are in that statement, on chain: never in the round's bundle)."""
    return [b"model", parent, model, merkle_root, struct.pack(">Q", leaves), key_sha256]


MAX_KEY_HOLDERS = 256


def key_statement_chunks(public_key_sha256: bytes, threshold: int, holders: Sequence[str], weight_scale: int,
                         first_round: int, committee: CommitteeTerms | None = None) -> list[bytes]:
    """What every key holder signs at the end of the key ceremony: the joint public key's digest, the threshold
    t, the holders' ids (sorted: a holder's Shamir point is its index + 1), the weight scale W (clients encrypt
    ``n_k / W * delta``; co-signers multiply back by W), the first round the key decrypts, and, for a committee
    drawn by sortition (ledger.committee), the terms of the draw: how many candidates, how many of them the holders
    assumed may collude, which draw of the run, and its seed. A key of the whole federation has zeros there."""
    ordered = sorted(holders)
    if list(holders) != ordered or len(set(ordered)) != len(ordered) or not 2 <= len(ordered) <= MAX_KEY_HOLDERS:
        raise ValueError(f"a key statement names 2..{MAX_KEY_HOLDERS} distinct holders in sorted order")
    if len(public_key_sha256) != 32 or not 1 <= threshold <= len(ordered) or weight_scale < 1 or first_round < 1:
        raise ValueError("a key statement needs a 32-byte key digest, 1 <= t <= n, W >= 1 and a first round >= 1")
    terms = committee or CommitteeTerms()
    if len(terms.seed) != 32 or min(terms.candidates, terms.colluders, terms.draw) < 0 or \
            (terms.draw and terms.candidates < len(ordered)):
        raise ValueError("a committee's terms: a 32-byte seed, counts >= 0, at least as many candidates as holders")
    return [b"key", public_key_sha256,
            struct.pack(">QQQQQQQ", threshold, len(ordered), weight_scale, first_round, terms.candidates,
                        terms.colluders, terms.draw), terms.seed,
            *(length_prefixed(h) for h in ordered)]


@dataclass(frozen=True)
class CommitteeTerms:
    """How a key's holders were drawn (ledger.committee): from ``candidates`` devices, ``colluders`` of which the
    holders assumed may be the server's, in the run's ``draw``-th draw, whose seed is ``seed``. ``draw`` 0: the
    key's holders are the whole federation (the older rule: a majority of the registered clients)."""

    candidates: int = 0
    colluders: int = 0
    draw: int = 0
    seed: bytes = ZERO_HASH


def leaf_bytes(fields: SignedFields, public_key: bytes, signature: bytes) -> bytes:
    """A round's Merkle leaf: the signed fields, the signer's key and the signature, so it verifies from itself."""
    return b"fedproof/leaf/v1\x00" + fields.canonical_bytes() + public_key + signature


class SigningKey:
    """An Ed25519 key: a client's signing key, and the operator's deployment key. One class: files are PKCS#8 PEM,
    written 0600, encrypted when a password is given (the operator's), unencrypted on a device. It signs a
    statement's canonical bytes, which each statement builds itself (``canonical_bytes()``)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path, password: bytes | None = None) -> SigningKey:
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"no signing key at {path} (create one with `fedproof keys init`, "
                               "`fedproof client init` or `fedproof provision`)")
        data = read_bounded(path, _MAX_KEY_FILE, "Ed25519 key", KeyFileError)
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as exc:
            hint = "or the wrong password" if password else "or an encrypted one (it needs its password)"
            raise KeyFileError(f"{path}: not a PEM private key, {hint} ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        return cls(key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM (what :meth:`load` reads; write it 0600), encrypted with ``password``."""
        encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, statement) -> bytes:
        """The signature over ``statement.canonical_bytes()`` (signed fields, a manifest, a release statement)."""
        return self._key.sign(statement.canonical_bytes())


_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
VERIFIED_CACHE_ENTRIES = 200_000
"""Signatures this process has verified (a digest of key, message and signature each): a fleet's devices check the
same draw transcript, and in a simulation they share processes. Only successes are kept; a triple that verified
once verifies always."""


def verify_signature(public_key: bytes, fields: SignedFields, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is ``public_key``'s signature over ``fields``."""
    if len(public_key) != 32 or len(signature) != 64:
        raise BadSignature(f"client {fields.client_id}: malformed key or signature")
    message = fields.canonical_bytes()
    seen = hashlib.sha256(public_key + signature + message).digest()
    if seen in _VERIFIED:
        return
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature as exc:
        raise BadSignature(f"client {fields.client_id}: signature does not match the update") from exc
    _VERIFIED[seen] = None
    if len(_VERIFIED) > VERIFIED_CACHE_ENTRIES:
        _VERIFIED.popitem(last=False)


# ------------------------------------------------------------------ the operator's statements (their layouts live here)


def manifest_bytes(m) -> bytes:
    """What the operator signs in a deployment manifest (``ledger.manifest.DeploymentManifest``): fixed layout,
    integers big-endian, strings with a u16 length."""
    return b"".join([
        MANIFEST_TAG + b"\x00", struct.pack(">Q", m.chain_id), m.genesis, m.contract, m.artifact_sha256,
        m.source_model_sha256, length_prefixed(m.run_id), struct.pack(">Q", m.round), length_prefixed(m.version),
        struct.pack(">QQ", m.sequence, m.expires), length_prefixed(m.derivation.graph),
        bytes([int(m.derivation.per_channel)]), m.derivation.calibration_sha256, bytes([int(m.rollback)]),
        m.profile_sha256,
    ])


def release_bytes(r) -> bytes:
    """What the operator signs in a release statement (``ledger.release.ReleaseStatement``)."""
    return b"".join([
        RELEASE_TAG + b"\x00", struct.pack(">Q", r.chain_id), r.genesis, r.contract,
        struct.pack(">QB", r.sequence, int(r.action)), length_prefixed(r.channel), r.artifact, r.previous,
        struct.pack(">H", r.canary_bp),
    ])
