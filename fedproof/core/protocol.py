"""The wire format of a round, shared by ClientApp and ServerApp (neither imports the other).

The server sends ``arrays`` (the global model) and ``config`` (the run's settings plus ``server-round``)
with every train and evaluate message. A train reply holds the update (plaintext ``arrays``, or the
ciphertexts of :class:`EncryptedPayload`), ``metrics`` (with ``num-examples``), a ``client`` ConfigRecord
(who the client is, whether it trained or declined, and the privacy it has spent) and the
:class:`SignedEnvelope`. A client that declines (its privacy budget would be exceeded) sends no update; the
server counts that as a status, not a failure. This module writes records; :mod:`fedproof.core.replies` reads
replies, with every check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedproof.base.records import get_record
from fedproof.base.errors import Reason, UpdateRejected
from ledger.signing import SignedFields, payload_digest

TRAIN, EVALUATE = "train", "evaluate"
"""Message types of the two phases every round has (under HE, the threshold exchanges below are added)."""
ARRAYS_KEY, CONFIG_KEY, METRICS_KEY = "arrays", "config", "metrics"
REPORT_KEY = "client"
TRAINED, BUDGET_EXHAUSTED = "trained", "budget-exhausted"
POLICY_REFUSED = "policy-refused"
NOT_SAMPLED = "not-sampled"
SAMPLED = "sampled"
"""User-level DP's check-in: the device takes part in the round (send it the model)."""
"""A train reply's status under user-level DP when the device's own coin said it sits this round out."""
"""A train reply's status when the run asks for less privacy than the client's policy allows: nothing trained."""
WITHHELD = "withheld"
"""An evaluate reply's status when the client releases no metrics (a DP client: its accountant does not cover
them, so they stay on the device)."""
PLAIN_MAX_ABS_DELTA = 4.0
"""Largest |update - global| per parameter an update may carry (a client checks it before encrypting or sending)."""


@dataclass(frozen=True)
class ClientReport:
    client_id: str
    status: str = TRAINED
    epsilon: float | None = None
    """Privacy spent so far; None when the client trains without DP."""
    reason: str = ""
    next_round: int = 0
    """User-level DP: the next round this device takes part in, as far as its coins are drawn (0: none known).
    A hint for the server's asking, nothing more: a device's participation never depends on it."""

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({"client-id": self.client_id, "status": self.status, "reason": self.reason})
        if self.epsilon is not None:
            record["epsilon"] = float(self.epsilon)
        if self.next_round:
            record["next-round"] = int(self.next_round)
        return record

    @classmethod
    def from_reply(cls, content: RecordDict) -> ClientReport | None:
        """The report in a reply; None if it carries none (not a fedproof client); :class:`UpdateRejected` if
        it is malformed (fields of the wrong type, an unknown status, an epsilon that is not a finite number)."""
        record = get_record(content, REPORT_KEY, ConfigRecord)
        if record is None:
            return None
        try:
            client_id, status = _typed(record, "client-id", str), _typed(record, "status", str)
            reason = _typed(record, "reason", str) if "reason" in record else ""
            epsilon = _typed(record, "epsilon", float) if "epsilon" in record else None
            next_round = _typed(record, "next-round", int) if "next-round" in record else 0
        except (KeyError, TypeError) as exc:
            raise UpdateRejected(f"malformed client report: {exc}") from exc
        if status not in (TRAINED, BUDGET_EXHAUSTED, POLICY_REFUSED, NOT_SAMPLED, SAMPLED, WITHHELD, REFUSED):
            raise UpdateRejected(f"client report has an unknown status {status[:40]!r}")
        if epsilon is not None and not (math.isfinite(epsilon) and epsilon >= 0):
            raise UpdateRejected("client report's epsilon is not a finite non-negative number")
        if not 0 <= next_round < 1 << 31:
            raise UpdateRejected("client report's next round is not a round number")
        return cls(client_id, status, epsilon, reason, next_round)


# ----------------------------------------------------------------------------------------- encrypted updates
CIPHERTEXTS_KEY, HEADER_KEY = "he", "he-header"
CIPHERTEXT_STYPE = "fedproof.ckks"
PACKED_KEY, LENGTHS_KEY = "ciphertexts", "lengths"
MAX_CIPHERTEXTS = 1 << 16
"""More ciphertexts than any model this framework trains needs (a 10M-parameter model is ~5,000)."""


def pack_ciphertexts(chunks: tuple[bytes, ...]) -> ArrayRecord:
    """Ciphertexts as one opaque ``Array`` (their bytes end to end) and one of their lengths.

    Flower moves every ``Array`` of a message as its own object, one HTTP request each between a SuperLink and a
    SuperNode: a model's 20 ciphertexts as 20 Arrays made a decryption request of 126 objects and ~1.5 s of
    transfer on loopback; packed, it is 11 objects.
    """
    return ArrayRecord({
        PACKED_KEY: Array(dtype="bytes", shape=(sum(len(c) for c in chunks),), stype=CIPHERTEXT_STYPE,
                          data=b"".join(chunks)),
        LENGTHS_KEY: Array(np.array([len(c) for c in chunks], dtype="<i8")),
    })


def unpack_ciphertexts(record: ArrayRecord) -> tuple[bytes, ...]:
    """The ciphertexts :func:`pack_ciphertexts` packed; :class:`UpdateRejected` for anything else."""
    if set(record.keys()) != {PACKED_KEY, LENGTHS_KEY}:
        raise UpdateRejected(f"ciphertexts come as {PACKED_KEY!r} and {LENGTHS_KEY!r}, not {sorted(record.keys())[:4]}")
    packed, lengths = record[PACKED_KEY], record[LENGTHS_KEY]
    try:
        sizes = lengths.numpy() if lengths.stype == "numpy.ndarray" else None
    except ValueError as exc:
        raise UpdateRejected(f"unreadable ciphertext lengths: {exc}") from exc
    if packed.stype != CIPHERTEXT_STYPE or sizes is None or sizes.dtype != np.dtype("<i8"):
        raise UpdateRejected(f"ciphertexts are not {CIPHERTEXT_STYPE} with int64 lengths", Reason.WRONG_DTYPE)
    data = packed.data
    if (sizes.ndim != 1 or not 0 < sizes.size <= MAX_CIPHERTEXTS or (sizes < 0).any()
            or int(sizes.sum()) != len(data)):
        raise UpdateRejected(f"ciphertext lengths do not cut {len(data)} bytes into ciphertexts", Reason.CORRUPT_CIPHERTEXT)
    ends = np.cumsum(sizes).tolist()
    return tuple(data[start:end] for start, end in zip([0] + ends[:-1], ends))


@dataclass(frozen=True)
class EncryptedPayload:
    """Ciphertexts of a flat vector of ``num_values`` reals, as they travel in a Message.

    The ciphertexts go in an ArrayRecord (:func:`pack_ciphertexts`: one opaque ``Array``, which Flower cuts into
    5 MiB chunks, so payloads of any size pass its transport); ``num_values``, ``num_summed`` (how many clients' vectors
    were added into it: 1 for a client's update) and the payload's SHA-256 go in a ConfigRecord beside it.
    SEAL itself notices only about a third of single bit flips in a seeded ciphertext, so :meth:`take` checks
    the digest (and the client's signature covers the same digest).
    """

    chunks: tuple[bytes, ...]
    num_values: int
    num_summed: int = 1

    def put(self, content: RecordDict) -> RecordDict:
        content[CIPHERTEXTS_KEY] = pack_ciphertexts(self.chunks)
        content[HEADER_KEY] = ConfigRecord(
            {"num-values": self.num_values, "num-summed": self.num_summed, "sha256": payload_digest(self.chunks)}
        )
        return content

    @classmethod
    def take(cls, content: RecordDict) -> EncryptedPayload:
        """The payload in ``content``; :class:`UpdateRejected` if it is missing or malformed."""
        record = get_record(content, CIPHERTEXTS_KEY, ArrayRecord)
        header = get_record(content, HEADER_KEY, ConfigRecord)
        if record is None or header is None:
            raise UpdateRejected("the reply carries no encrypted update (was the client started without HE?)",
                                 Reason.WRONG_MODE)
        num_values, num_summed = header.get("num-values"), header.get("num-summed")
        if not (isinstance(num_values, int) and isinstance(num_summed, int) and num_values > 0 and num_summed > 0):
            raise UpdateRejected("encrypted update header lacks positive num-values / num-summed")
        chunks = unpack_ciphertexts(record)
        if header.get("sha256") != payload_digest(chunks):
            raise UpdateRejected("encrypted update does not match its SHA-256: corrupted or altered in transit",
                                 Reason.PAYLOAD_MISMATCH)
        return cls(chunks, num_values, num_summed)


# ----------------------------------------------------------------------------------------- signatures
SIGNED_KEY = "signed"


@dataclass(frozen=True)
class SignedEnvelope:
    """A signature and the fields it covers, as they travel beside a payload (ledger.signing has the bytes)."""

    fields: SignedFields
    signature: bytes

    def put(self, content: RecordDict, key: str = SIGNED_KEY) -> RecordDict:
        f = self.fields
        content[key] = ConfigRecord({
            "tag": f.tag, "chain-id": f.chain_id, "contract": f.contract, "run-id": f.run_id, "round": f.round,
            "client-id": f.client_id, "payload-sha256": f.payload_sha256, "num-examples": f.num_examples,
            "epsilon-scaled": str(f.epsilon_scaled), "genesis": f.genesis, "parent-model": f.parent_model_hash,
            "signature": self.signature,
        })
        return content

    @classmethod
    def take(cls, content: RecordDict, key: str = SIGNED_KEY) -> SignedEnvelope:
        record = get_record(content, key, ConfigRecord)
        if record is None:
            raise UpdateRejected("the reply is not signed", Reason.UNSIGNED)
        try:
            fields = SignedFields(
                tag=_typed(record, "tag", bytes), chain_id=_typed(record, "chain-id", int),
                contract=_typed(record, "contract", bytes), run_id=_typed(record, "run-id", str),
                round=_typed(record, "round", int), client_id=_typed(record, "client-id", str),
                payload_sha256=_typed(record, "payload-sha256", bytes),
                num_examples=_typed(record, "num-examples", int),
                epsilon_scaled=int(_typed(record, "epsilon-scaled", str)),
                genesis=_typed(record, "genesis", bytes), parent_model_hash=_typed(record, "parent-model", bytes),
            )
            return cls(fields, _typed(record, "signature", bytes))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected(f"malformed signature record: {exc}") from exc


def _typed(record: ConfigRecord, key: str, kind: type):
    """``record[key]`` if it is exactly of ``kind`` (never converted: ``bytes(10**12)`` would allocate a terabyte)."""
    value = record[key]
    if type(value) is not kind or (kind is int and not 0 <= value < 2**64) or (kind is str and len(value) > 4096):
        raise TypeError(f"{key} must be {kind.__name__}")
    return value


ROUND_KEY = "server-round"


def round_settings(settings: Mapping[str, bool | int | float | str], server_round: int) -> ConfigRecord:
    """The ``config`` record of every message the server sends: the run's settings and the round."""
    return ConfigRecord({**settings, ROUND_KEY: server_round})


def model_digest(arrays: ArrayRecord) -> str:
    """SHA-256 (hex) of a model as it travels: each array's name and bytes, in order."""
    return payload_digest([part for key, array in arrays.items() for part in (key.encode(), array.data)]).hex()


def payload_chunks(content: RecordDict) -> list[bytes]:
    """The exact bytes of a reply's payload, as signed: its ciphertexts, or each plaintext array's name and bytes."""
    ciphertexts = get_record(content, CIPHERTEXTS_KEY, ArrayRecord)
    if ciphertexts is not None:
        return list(unpack_ciphertexts(ciphertexts))
    arrays = get_record(content, ARRAYS_KEY, ArrayRecord)
    if arrays is None:
        raise UpdateRejected("the reply carries no update", Reason.WRONG_MODE)
    return [part for key, array in arrays.items() for part in (key.encode(), array.data)]


# ----------------------------------------------------------------------------------------- threshold HE
KEYGEN_HELLO, KEYGEN_COMMIT, KEYGEN_REVEAL = "query.keygen_hello", "query.keygen_commit", "query.keygen_reveal"
KEYGEN_FINISH, KEYGEN_CONFIRM = "query.keygen_finish", "query.keygen_confirm"
DRAW_COMMIT, DRAW_REVEAL, KEY_JOIN = "query.draw_commit", "query.draw_reveal", "query.key_join"
CHECK_IN = "query.check_in"
PUBLIC_KEY_KEY = "public-key"
"""A train message's copy of the joint key's p0, for contributors outside the committee (checked against the
statement every holder signed)."""
DRAW_KEY, TRANSCRIPT_KEY = "draw", "draw-transcript"
"""A committee draw's record, and its transcript as the ceremony's commit step and a key join carry it."""
"""The key ceremony's five exchanges (privacy.keygen): announce, commit to a deal, reveal it to the frozen set of
commitments, finish (sign the key statement, or complain about a dealer), confirm every holder signed it."""
REVEAL_UPDATE = "query.reveal_update"
"""Asks a contributor, after the round's signed commitments are frozen, to reveal the ciphertexts it committed to."""
DECRYPT_SHARE = "query.decrypt_share"
"""Asks a key holder for its partial decryption of a round's sum, with the signed leaves it must check."""
COSIGN_MODEL = "query.cosign_model"
"""Asks a key holder to fuse the round's partial decryptions itself and co-sign the resulting model's hash."""
REFUSED = "refused"
"""A decryptor's reply status when a request fails its checks (the reason names the check)."""
CEREMONY_KEY, REQUEST_KEY, PARTIAL_KEY, DECRYPTION_KEY = "ceremony", "decrypt-request", "partial", "decryption"
COSIGN_KEY = "cosign"
MAX_LEAVES = 4096


def hello_record(party: str, contribution: bytes, exchange_key: bytes) -> ConfigRecord:
    return ConfigRecord({"party": party, "contribution": contribution, "exchange-key": exchange_key})


def take_hello(record: ConfigRecord) -> tuple[str, bytes, bytes]:
    try:
        return _typed(record, "party", str), _typed(record, "contribution", bytes), _typed(record, "exchange-key", bytes)
    except (KeyError, TypeError) as exc:
        raise UpdateRejected(f"malformed key-ceremony hello: {exc}") from exc


def partial_chunks(sum_sha256: bytes, merkle_root: bytes, decryptors: tuple[str, ...], partial: bytes) -> list[bytes]:
    """What a decryptor signs: the sum it decrypted, the leaves it checked, the set it decrypted with, its share."""
    return [b"partial", sum_sha256, merkle_root, "\n".join(decryptors).encode(), partial]


def reveal_chunks(frozen_root: bytes) -> list[bytes]:
    """What a contributor signs as it reveals its ciphertexts: the frozen set of the round's commitments."""
    return [b"reveal", frozen_root]


def _put_envelopes(content: RecordDict, prefix: str, envelopes: tuple[SignedEnvelope, ...]) -> None:
    for i, envelope in enumerate(envelopes):
        envelope.put(content, f"{prefix}-{i:04d}")


def _take_envelopes(content: RecordDict, prefix: str, count: int) -> tuple[SignedEnvelope, ...]:
    if not 0 <= count <= MAX_LEAVES:
        raise UpdateRejected(f"{count} {prefix} entries: at most {MAX_LEAVES}")
    return tuple(SignedEnvelope.take(content, f"{prefix}-{i:04d}") for i in range(count))


@dataclass(frozen=True)
class RevealRequest:
    """The round's frozen set of signed commitments (every admitted train reply's signed leaf, ciphertexts
    withheld): a contributor reveals its ciphertexts only to a set that holds its own commitment."""

    committed: tuple[SignedEnvelope, ...]

    def put(self, content: RecordDict) -> RecordDict:
        content[REQUEST_KEY] = ConfigRecord({"committed": len(self.committed)})
        _put_envelopes(content, "committed", self.committed)
        return content

    @classmethod
    def take(cls, content: RecordDict) -> RevealRequest:
        record = get_record(content, REQUEST_KEY, ConfigRecord)
        if record is None:
            raise UpdateRejected("not a reveal request")
        try:
            count = _typed(record, "committed", int)
        except (KeyError, TypeError) as exc:
            raise UpdateRejected(f"malformed reveal request: {exc}") from exc
        return cls(_take_envelopes(content, "committed", count))


@dataclass(frozen=True)
class DecryptionRequest:
    """The server's request for partial decryptions: who decrypts together, the sum it computed, every summed
    update (its signed leaf, its ciphertexts and its signed reveal) and the round's frozen set of commitments,
    so each decryptor recomputes the sum and checks that every leaf in it was committed before any was revealed."""

    decryptors: tuple[str, ...]
    sum_sha256: bytes
    leaves: tuple[tuple[SignedEnvelope, tuple[bytes, ...]], ...]
    reveals: tuple[SignedEnvelope, ...] = ()
    """One per leaf: its contributor's signature over the frozen set's root (:func:`reveal_chunks`)."""
    committed: tuple[SignedEnvelope, ...] = ()
    """The frozen set: every commitment of the round, revealed or not."""

    def put(self, content: RecordDict) -> RecordDict:
        content[REQUEST_KEY] = ConfigRecord({"decryptors": list(self.decryptors), "sum-sha256": self.sum_sha256,
                                             "leaves": len(self.leaves), "committed": len(self.committed)})
        for i, (envelope, chunks) in enumerate(self.leaves):
            content[f"leaf-{i:04d}"] = pack_ciphertexts(chunks)
            envelope.put(content, f"leaf-{i:04d}-signed")
        _put_envelopes(content, "reveal", self.reveals)
        _put_envelopes(content, "committed", self.committed)
        return content

    @classmethod
    def take(cls, content: RecordDict) -> DecryptionRequest:
        record = get_record(content, REQUEST_KEY, ConfigRecord)
        if record is None:
            raise UpdateRejected("not a decryption request")
        try:
            decryptors = record["decryptors"]
            if not isinstance(decryptors, list) or not all(isinstance(d, str) for d in decryptors):
                raise TypeError("decryptors must be a list of client ids")
            count, digest = _typed(record, "leaves", int), _typed(record, "sum-sha256", bytes)
            committed = _typed(record, "committed", int)
        except (KeyError, TypeError) as exc:
            raise UpdateRejected(f"malformed decryption request: {exc}") from exc
        if not 0 <= count <= MAX_LEAVES:
            raise UpdateRejected(f"a decryption request of {count} leaves")
        leaves = []
        for i in range(count):
            arrays = get_record(content, f"leaf-{i:04d}", ArrayRecord)
            if arrays is None:
                raise UpdateRejected(f"leaf {i} of the request carries no ciphertexts")
            leaves.append((SignedEnvelope.take(content, f"leaf-{i:04d}-signed"), unpack_ciphertexts(arrays)))
        reveals = _take_envelopes(content, "reveal", count if count and committed else 0)
        return cls(tuple(decryptors), digest, tuple(leaves), reveals, _take_envelopes(content, "committed", committed))


@dataclass(frozen=True)
class CosignRequest:
    """The server's request for a model co-signature: everything a key holder needs to recompute the round's new
    model by itself (the decryption request with every signed leaf, the t signed partial decryptions, the parent
    model) and the hash the server got."""

    decryption: DecryptionRequest
    partials: tuple[tuple[SignedEnvelope, np.ndarray], ...]
    """One per decryptor, in the decryptors' order: its signed envelope and (ciphertexts, N) uint64 residues."""
    parent: ArrayRecord
    model_sha256: bytes

    def put(self, content: RecordDict) -> RecordDict:
        self.decryption.put(content)
        content[COSIGN_KEY] = ConfigRecord({"model-sha256": self.model_sha256, "partials": len(self.partials)})
        content[ARRAYS_KEY] = self.parent
        for i, (envelope, values) in enumerate(self.partials):
            content[f"partial-{i:04d}"] = ArrayRecord({PARTIAL_KEY: Array(np.ascontiguousarray(values))})
            envelope.put(content, f"partial-{i:04d}-signed")
        return content

    @classmethod
    def take(cls, content: RecordDict) -> CosignRequest:
        decryption = DecryptionRequest.take(content)
        record, parent = get_record(content, COSIGN_KEY, ConfigRecord), get_record(content, ARRAYS_KEY, ArrayRecord)
        if record is None or parent is None:
            raise UpdateRejected("not a co-signing request")
        try:
            digest, count = _typed(record, "model-sha256", bytes), _typed(record, "partials", int)
        except (KeyError, TypeError) as exc:
            raise UpdateRejected(f"malformed co-signing request: {exc}") from exc
        if count != len(decryption.decryptors):
            raise UpdateRejected("a co-signing request needs one partial decryption per decryptor")
        partials = []
        for i in range(count):
            arrays = get_record(content, f"partial-{i:04d}", ArrayRecord)
            if arrays is None or PARTIAL_KEY not in arrays:
                raise UpdateRejected(f"partial decryption {i} is missing")
            array = arrays[PARTIAL_KEY]
            if (array.stype != "numpy.ndarray" or array.dtype != "uint64" or len(array.shape) != 2
                    or len(array.data) > math.prod(array.shape) * 8 + 1024):  # sizes checked before parsing
                raise UpdateRejected(f"partial decryption {i} is not a matrix of uint64 residues")
            partials.append((SignedEnvelope.take(content, f"partial-{i:04d}-signed"), array.numpy()))
        return cls(decryption, tuple(partials), parent, digest)
