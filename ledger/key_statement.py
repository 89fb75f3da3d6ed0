"""The run's key statement: what the key ceremony ends with, signed by every key holder, recorded on chain.

A threshold key is only as good as the promise "t of these n holders must join to decrypt". Nothing about it may
come from the server's files: an auditor (``fedproof audit verify``) and a device (``edge pull``) read t, the
holders and the weight scale from this statement, check that every holder named in it signed it, and hold each
round's co-signatures against it. Its digest is also inside every model co-signature
(:func:`ledger.signing.model_statement_chunks`), so a co-signature belongs to exactly one key.

Bytes: the statement is :func:`ledger.signing.key_statement_chunks`, each chunk length-prefixed (u32); the signed
statement appends each holder's 64-byte signature in holder order. Both parse in bounded memory and raise
:class:`KeyStatementError` on anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ledger.committee import DEFAULT_MAX_CAPTURE_RISK, DrawError, check_risk
from ledger.errors import LedgerError
from ledger.signing import (
    KEY_TAG,
    MAX_KEY_HOLDERS,
    NO_DP,
    CommitteeTerms,
    SignedFields,
    key_statement_chunks,
    payload_digest,
    verify_signature,
)

MAX_STATEMENT_BYTES = 128 + 16 * 8 + MAX_KEY_HOLDERS * (4 + 2 + 256) + 64 * MAX_KEY_HOLDERS
KEY_ROUND = 0
"""The ``round`` field of a key-statement signature (a key is not a round's)."""


class KeyStatementError(LedgerError):
    """A key statement is malformed, or not signed by every holder it names."""


def majority(parties: int) -> int:
    return parties // 2 + 1


@dataclass(frozen=True)
class KeyStatement:
    public_key_sha256: bytes
    threshold: int
    holders: tuple[str, ...]
    """Sorted client ids; holder ``holders[i]`` has Shamir point ``i + 1``."""
    weight_scale: int
    first_round: int
    committee: CommitteeTerms = CommitteeTerms()
    """How the holders were drawn, for a committee key (zeros: the whole federation holds the key)."""

    def __post_init__(self) -> None:
        try:
            self.chunks()
        except ValueError as exc:
            raise KeyStatementError(f"not a key statement: {exc}") from exc

    def chunks(self) -> list[bytes]:
        return key_statement_chunks(self.public_key_sha256, self.threshold, self.holders, self.weight_scale,
                                    self.first_round, self.committee)

    @property
    def sha256(self) -> bytes:
        """The key's id: what every model co-signature of a round under this key names."""
        return payload_digest(self.chunks())

    @property
    def points(self) -> dict[str, int]:
        return {holder: i + 1 for i, holder in enumerate(self.holders)}

    def fields(self, holder: str, chain_id: int, contract: bytes, genesis: bytes, run_id: str) -> SignedFields:
        """What ``holder`` signs: the statement's digest, bound to the run's chain, contract and run."""
        return SignedFields(chain_id=chain_id, contract=contract, run_id=run_id, round=KEY_ROUND, client_id=holder,
                            payload_sha256=self.sha256, num_examples=0, epsilon_scaled=NO_DP, tag=KEY_TAG,
                            genesis=genesis)

    def to_bytes(self) -> bytes:
        return b"".join(struct.pack(">I", len(c)) + c for c in self.chunks())

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyStatement:
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_STATEMENT_BYTES:
            raise KeyStatementError("a key statement is at most a few kilobytes of bytes")
        chunks, at, data = [], 0, bytes(data)
        while at < len(data):
            if at + 4 > len(data) or len(chunks) > MAX_KEY_HOLDERS + 4:
                raise KeyStatementError("a key statement's chunks are cut short or too many")
            size = struct.unpack_from(">I", data, at)[0]
            if at + 4 + size > len(data):
                raise KeyStatementError("a key statement's chunk runs past its end")
            chunks.append(data[at + 4:at + 4 + size])
            at += 4 + size
        if len(chunks) < 6 or chunks[0] != b"key" or len(chunks[2]) != 56 or len(chunks[3]) != 32:
            raise KeyStatementError("not a key statement (tag, digest, counts or draw seed)")
        threshold, holders, weight_scale, first_round, candidates, colluders, draw = struct.unpack(">QQQQQQQ",
                                                                                                 chunks[2])
        names = []
        for raw in chunks[4:]:
            if len(raw) < 2 or struct.unpack_from(">H", raw)[0] != len(raw) - 2:
                raise KeyStatementError("a key statement's holder id is malformed")
            try:
                names.append(raw[2:].decode())
            except UnicodeDecodeError as exc:
                raise KeyStatementError("a key statement's holder id is not UTF-8") from exc
        if holders != len(names):
            raise KeyStatementError(f"a key statement counts {holders} holders and names {len(names)}")
        statement = cls(chunks[1], threshold, tuple(names), weight_scale, first_round,
                        CommitteeTerms(candidates, colluders, draw, chunks[3]))
        if statement.to_bytes() != data:
            raise KeyStatementError("a key statement not in canonical form")
        return statement


@dataclass(frozen=True)
class SignedKeyStatement:
    """The statement and every holder's signature of it (holder -> 64 bytes)."""

    statement: KeyStatement
    signatures: Mapping[str, bytes]

    def signatures_bytes(self) -> bytes:
        return b"".join(self.signatures[h] for h in self.statement.holders)

    @classmethod
    def from_bytes(cls, statement: bytes, signatures: bytes) -> SignedKeyStatement:
        parsed = KeyStatement.from_bytes(statement)
        if not isinstance(signatures, (bytes, bytearray)) or len(signatures) != 64 * len(parsed.holders):
            raise KeyStatementError(f"a key statement of {len(parsed.holders)} holders carries "
                                    f"{64 * len(parsed.holders)} bytes of signatures")
        return cls(parsed, {h: bytes(signatures[64 * i:64 * i + 64]) for i, h in enumerate(parsed.holders)})

    def verify(self, public_keys: Mapping[str, bytes], chain_id: int, contract: bytes, genesis: bytes, run_id: str,
               registered: int, max_capture_risk: float = DEFAULT_MAX_CAPTURE_RISK) -> None:
        """Raise :class:`KeyStatementError` unless every holder named signed this statement with its key in
        ``public_keys`` for this chain, contract and run, t is at least a majority of its holders, and the holders
        are either a majority of the ``registered`` clients or a committee drawn (ledger.committee) from no more
        candidates than are registered, whose risk of capture under the colluders its holders assumed, over the
        run's draws, is within ``max_capture_risk`` (the rules every device applies before it uses the key)."""
        s = self.statement
        n, terms = len(s.holders), s.committee
        if not max(2, majority(n)) <= s.threshold <= n:
            raise KeyStatementError(f"a {s.threshold}-of-{n} key: a key needs t a majority of its holders")
        if terms.draw == 0 and n < majority(registered):
            raise KeyStatementError(f"a {s.threshold}-of-{n} key: a key must be held by a majority of the "
                                    f"{registered} registered clients, or by a committee drawn by sortition")
        if terms.draw:
            if terms.candidates > registered:
                raise KeyStatementError(f"a committee drawn from {terms.candidates} candidates, more than the "
                                        f"{registered} registered clients")
            try:
                check_risk(terms.candidates, terms.colluders, n, s.threshold, terms.draw, max_capture_risk)
            except DrawError as exc:
                raise KeyStatementError(str(exc)) from exc
        if set(self.signatures) != set(s.holders):
            raise KeyStatementError("the key statement is not signed by exactly its holders")
        for holder in s.holders:
            key = public_keys.get(holder)
            if key is None:
                raise KeyStatementError(f"key holder {holder!r} is not a registered client")
            try:
                verify_signature(key, s.fields(holder, chain_id, contract, genesis, run_id), self.signatures[holder])
            except LedgerError as exc:
                raise KeyStatementError(f"key holder {holder!r} did not sign this key statement: {exc}") from exc
