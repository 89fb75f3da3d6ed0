"""What a device keeps between the messages of threshold HE, as typed values in its own ``Context.state``.

Each value has one name in the state and three verbs: ``keep`` (write it whole), ``recall`` (read it, or None)
and ``forget``. Its scalars, byte strings and tuples go into a ConfigRecord under its name, its arrays into an
ArrayRecord beside it, so no step reads or writes the state by hand and a new field is one line here. Nothing
here ever leaves the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from fedproof.base.records import get_record
from privacy.keygen import KeyHolding
from privacy.threshold import JointPublicKey, ThresholdParams, common_random_polynomial
from ledger.key_statement import KeyStatement
from ledger.signing import CommitteeTerms

T = TypeVar("T", bound="Kept")


class Kept:
    """Base of the typed values a device keeps: a dataclass whose fields are int, bytes, str, tuples of them, or
    numpy arrays; ``KEY`` names it in ``Context.state``."""

    KEY: ClassVar[str]

    def keep(self, context: Context) -> None:
        scalars: dict[str, Any] = {}
        arrays: dict[str, Array] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = Array(np.ascontiguousarray(value))
            elif value is not None:
                scalars[f.name] = list(value) if isinstance(value, tuple) else value
        context.state[self.KEY] = ConfigRecord(scalars)
        if arrays:
            context.state[self.KEY + "-arrays"] = ArrayRecord(arrays)
        elif self.KEY + "-arrays" in context.state:
            del context.state[self.KEY + "-arrays"]

    @classmethod
    def recall(cls: type[T], context: Context) -> T | None:
        record = get_record(context.state, cls.KEY, ConfigRecord)
        if record is None:
            return None
        arrays = get_record(context.state, cls.KEY + "-arrays", ArrayRecord)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in record:
                value = record[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
            elif arrays is not None and f.name in arrays:
                values[f.name] = arrays[f.name].numpy()
        return cls(**values)

    @classmethod
    def forget(cls, context: Context) -> None:
        for key in (cls.KEY, cls.KEY + "-arrays"):
            if key in context.state:
                del context.state[key]


@dataclass(frozen=True)
class CeremonyState(Kept):
    """One attempt at the key ceremony: this party's secrets from its hello, then what it dealt and committed to,
    then the commitment set it revealed its deal to (a party reveals to one set only)."""

    KEY: ClassVar[str] = "fedproof.ceremony"

    secrets: bytes
    threshold: int = 0
    weight_scale: int = 0
    first_round: int = 0
    parties: tuple[str, ...] = ()
    """Everyone whose hello this party checked, sorted; empty until it dealt (a secret is dealt once)."""
    contributions: tuple[bytes, ...] = ()
    exchange_keys: tuple[bytes, ...] = ()
    commitment: bytes = b""
    """The hash of this party's deal, announced before any deal is seen; empty until it dealt."""
    recipients: tuple[str, ...] = ()
    sealed: tuple[bytes, ...] = ()
    public_share: np.ndarray | None = None
    commitment_set: bytes = b""
    """The digest of the frozen set this party revealed its deal to; empty until it revealed."""
    commitments: tuple[bytes, ...] = ()
    """Every party's commitment, in the order of ``parties``."""
    candidates: int = 0
    colluders: int = 0
    draw: int = 0
    seed: bytes = b""
    """A committee key: the draw's terms this party checked (ledger.committee); zeros for the whole federation."""

    def terms(self) -> CommitteeTerms:
        return CommitteeTerms(self.candidates, self.colluders, self.draw, self.seed or bytes(32))


@dataclass(frozen=True)
class HeldKey(Kept):
    """This device's share of the run's threshold key: the joint public key it computed itself, the statement
    every holder signed, and its log of decryptions (once per round; within the key's budget)."""

    KEY: ClassVar[str] = "fedproof.threshold"

    party: str
    statement: bytes
    p0: np.ndarray
    a: np.ndarray
    share: np.ndarray
    rounds: tuple[int, ...] = ()
    sums: tuple[bytes, ...] = ()
    repeats: tuple[int, ...] = ()
    decryptions: int = 0

    @classmethod
    def of(cls, holding: KeyHolding, statement: KeyStatement) -> HeldKey:
        p0, a = holding.public_key.to_arrays()
        return cls(holding.party, statement.to_bytes(), p0, a, holding.share)

    def key_statement(self) -> KeyStatement:
        return KeyStatement.from_bytes(self.statement)

    def holding(self, params: ThresholdParams) -> KeyHolding:
        statement = self.key_statement()
        pk = JointPublicKey(params, self.p0, [self.a[0], self.a[1]])
        if pk.digest != statement.public_key_sha256:
            raise ValueError("this device's stored key does not match its key statement")
        return KeyHolding(self.party, statement.points, statement.threshold, pk, self.share)


@dataclass(frozen=True)
class PendingKey(HeldKey):
    """A key this device computed and signed, not yet confirmed: it encrypts and decrypts under a key only once
    every holder signed the same statement (a complaint by anyone, or a missing signature, leaves it unused)."""

    KEY: ClassVar[str] = "fedproof.pending-threshold"


@dataclass(frozen=True)
class Upload(Kept):
    """The ciphertexts this device committed to in its latest train reply, until it reveals them (to one set, once:
    then only that set's root is kept)."""

    KEY: ClassVar[str] = "fedproof.upload"

    round: int
    leaf_signature: bytes
    num_values: int
    ciphertexts: tuple[bytes, ...]
    revealed_to: bytes = b""


@dataclass(frozen=True)
class VerifiedSum(Kept):
    """The sum this device last checked and helped decrypt (what the leaves said, and the re-randomized sum's
    c0): a co-signing request from the same decryption may then omit the leaves, and the device uses these."""

    KEY: ClassVar[str] = "fedproof.verified-sum"

    round: int
    decryptors: tuple[str, ...]
    sum_sha256: bytes
    merkle_root: bytes
    leaves: int
    examples: int
    parent: bytes
    c0: np.ndarray


@dataclass(frozen=True)
class DrawState(Kept):
    """This device's part in the run's latest committee draw (ledger.committee): its secret, the list it revealed
    the secret to (once per draw), and how many draws it has taken part in over its lifetime, this one included
    (each is a try for a server that aborts draws, or whole runs, until one suits it: the device counts them into
    the risk it accepts)."""

    KEY: ClassVar[str] = "fedproof.draw"

    number: int
    secret: bytes
    draws: int
    revealed_to: bytes = b""


@dataclass(frozen=True)
class JoinedKey(Kept):
    """The run's threshold key as a contributor outside the committee holds it: the statement every holder signed
    and the seed of the common polynomial a; no share, and not the 64 KB of p0 (a device's state travels with every
    message in a simulation). The server sends p0 with each train message; the device checks it against the
    signed digest before it encrypts a thing."""

    KEY: ClassVar[str] = "fedproof.joined-key"

    statement: bytes
    crp_seed: bytes

    def key_statement(self) -> KeyStatement:
        return KeyStatement.from_bytes(self.statement)

    def public_key(self, params: ThresholdParams, p0: np.ndarray) -> JointPublicKey:
        """The joint public key from ``p0`` as sent; ValueError unless it is the one every holder signed."""
        pk = JointPublicKey(params, p0, common_random_polynomial(params, self.crp_seed))
        if pk.digest != self.key_statement().public_key_sha256:
            raise ValueError("the public key sent is not the one every key holder signed")
        return pk
