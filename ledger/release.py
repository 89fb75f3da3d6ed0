"""Release statements: the operator's signed word that a deployed artifact is promoted on a channel (to all of its
devices or a canary share), that a channel rolls back to an earlier artifact, or that an artifact is retired.

A statement is signed with the operator's deployment key (the key every device pins, :mod:`ledger.manifest`) and
recorded on chain (``ReleaseRecorded``), which takes sequence numbers 1, 2, 3, ... in order only. The
contract cannot check Ed25519; devices and auditors do, so the account that writes the ledger (the server's) can
neither make a device switch models nor hide a release: a device acts only on a statement that is both on the
pinned chain and signed by the pinned key, and only on one newer than the last it acted on.

Bytes signed (fixed layout, integers big-endian, strings with a u16 length)::

    "fedproof/release/v1" 0x00 | chain id u64 | genesis 32 B | contract 20 B | sequence u64 | action u8
    | channel str | artifact 32 B | previous artifact 32 B (zero: none) | canary basis points u16

Which devices are in a canary is decided by the device id alone, and per artifact
(:func:`in_canary`): widening a canary from 10% to 50% of the same artifact keeps the first 10% in it, and the
next artifact's canary is a different sample of devices, so no device is always the first to try.

Stages, as :func:`stages` derives them from the statements: ``staging`` (promoted on the staging channel),
``production`` (promoted on the production channel; ``canary`` while only a share of devices runs it),
``retired`` (replaced by a full promotion, withdrawn by a rollback, or retired by name). The chain is the source of
truth for them; anything that mirrors them (MLflow's registry aliases) is a view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import LedgerError
from ledger.signing import release_bytes

CANARY_TAG = b"fedproof/canary/v1\x00"
ALL = 10_000
"""Basis points of a channel's devices that run a promoted artifact: 10,000 is every one."""
CHANNELS = ("staging", "production")
EVERY_CHANNEL = "*"
"""The channel of a retirement: the artifact leaves every channel."""
ZERO = bytes(32)


class ReleaseError(LedgerError):
    """A release statement is malformed, not signed by the pinned operator key, or for another chain."""


class Action(IntEnum):
    PROMOTE = 0
    ROLLBACK = 1
    RETIRE = 2


@dataclass(frozen=True)
class ReleaseStatement:
    chain_id: int
    genesis: bytes
    contract: bytes
    sequence: int
    action: Action
    channel: str
    artifact: bytes
    previous: bytes = ZERO
    """Promote: what the devices outside the canary keep running; rollback: the artifact withdrawn."""
    canary_bp: int = ALL

    def __post_init__(self) -> None:
        if (len(self.genesis), len(self.contract), len(self.artifact), len(self.previous)) != (32, 20, 32, 32):
            raise ReleaseError("a release statement needs a 32-byte genesis, a 20-byte contract and 32-byte hashes")
        if not 0 < self.sequence < 2**64 or not 0 < self.canary_bp <= ALL:
            raise ReleaseError("a release's sequence must be a u64 from 1 and its canary in 1..10000 basis points")
        try:
            object.__setattr__(self, "action", Action(self.action))
        except ValueError as exc:
            raise ReleaseError(f"no release action {self.action!r}") from exc
        valid = EVERY_CHANNEL if self.action is Action.RETIRE else CHANNELS
        if self.channel not in valid:
            raise ReleaseError(f"a {self.action.name.lower()} statement's channel is one of {valid}, "
                               f"not {self.channel!r}")
        if self.action is not Action.PROMOTE and self.canary_bp != ALL:
            raise ReleaseError("only a promotion can be a canary")
        if self.artifact == ZERO or self.artifact == self.previous:
            raise ReleaseError("a release names a deployed artifact, other than the one it replaces")

    def canonical_bytes(self) -> bytes:
        return release_bytes(self)


@dataclass(frozen=True)
class SignedRelease:
    statement: ReleaseStatement
    signature: bytes

    @classmethod
    def signed_by(cls, key, statement: ReleaseStatement) -> SignedRelease:
        """``statement`` signed with ``key`` (a :class:`~ledger.signing.SigningKey`: the operator's deployment key)."""
        return cls(statement, key.sign(statement))

    def verify(self, pinned_key: bytes, chain_id: int, genesis: bytes, contract: bytes) -> ReleaseStatement:
        """The statement, if ``pinned_key`` signed it for this chain and contract; else :class:`ReleaseError`."""
        s = self.statement
        if (s.chain_id, s.genesis, s.contract) != (chain_id, genesis, contract):
            raise ReleaseError(f"release {s.sequence} is for chain {s.chain_id} (genesis {s.genesis.hex()[:12]}…, "
                               f"contract 0x{s.contract.hex()}), not the pinned one")
        if len(pinned_key) != 32:
            raise ReleaseError("no operator key is pinned: no release statement can be trusted")
        try:
            Ed25519PublicKey.from_public_bytes(pinned_key).verify(self.signature, s.canonical_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise ReleaseError(f"release {s.sequence} is not signed by the pinned operator key") from exc
        return s


def in_canary(device_id: str, statement: ReleaseStatement) -> bool:
    """Whether this device runs the statement's artifact: its hash, keyed by the artifact, falls in the share."""
    if statement.canary_bp >= ALL:
        return True
    digest = hashlib.sha256(CANARY_TAG + statement.artifact + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % ALL < statement.canary_bp


def target(statement: ReleaseStatement, device_id: str) -> bytes:
    """The artifact a device of the statement's channel runs under it (zero: none, it keeps what it has)."""
    if statement.action is Action.PROMOTE and not in_canary(device_id, statement):
        return statement.previous
    return statement.artifact


def retired(statements: Iterable[ReleaseStatement]) -> set[bytes]:
    """Artifacts taken out of service, in statement order (a later promotion brings one back)."""
    out: set[bytes] = set()
    for s in sorted(statements, key=lambda s: s.sequence):
        if s.action is Action.RETIRE:
            out.add(s.artifact)
        elif s.action is Action.ROLLBACK:
            out.discard(s.artifact)
            out.add(s.previous)
        else:
            out.discard(s.artifact)
            if s.canary_bp == ALL and s.previous != ZERO:
                out.add(s.previous)
    out.discard(ZERO)
    return out


def stages(statements: Sequence[ReleaseStatement]) -> dict[bytes, str]:
    """Each released artifact's stage after these statements: staging, production, canary (n%) or retired."""
    out: dict[bytes, str] = {}
    for s in sorted(statements, key=lambda s: s.sequence):
        if s.action is Action.PROMOTE:
            out[s.artifact] = s.channel if s.canary_bp == ALL else f"canary ({s.canary_bp / 100:g}% of {s.channel})"
        elif s.action is Action.ROLLBACK:
            out[s.artifact] = s.channel
    for artifact in retired(statements):
        out[artifact] = "retired"
    return out


def latest(statements: Iterable[ReleaseStatement], channel: str) -> ReleaseStatement | None:
    """The newest promotion or rollback on ``channel``: what its devices run now."""
    found = [s for s in statements if s.channel == channel and s.action is not Action.RETIRE]
    return max(found, key=lambda s: s.sequence, default=None)


def verified(events: Iterable, pinned_key: bytes, chain_id: int, genesis: bytes,
             contract: bytes) -> tuple[list[tuple[object, ReleaseStatement]], list[str]]:
    """Each recorded statement (``ReleaseEvent``) the pinned key signed for this chain and contract, paired with
    its record, and a reason for each one it did not sign (a forged record is reported, never acted on)."""
    good, bad = [], []
    for event in events:
        try:
            good.append((event, event.signed(chain_id, genesis, contract).verify(pinned_key, chain_id, genesis,
                                                                                 contract)))
        except ReleaseError as exc:
            bad.append(f"ignored the release recorded in tx {event.tx_hash}: {exc}")
    return good, bad
