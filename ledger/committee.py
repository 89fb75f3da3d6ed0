"""A key committee drawn by sortition: which few devices of a fleet hold the run's threshold key, chosen so that the
server cannot pick them.

Why a committee: with every device a key party, a fleet of 1,000 needs 500 online decryptors, each downloading
every update of a round. A committee of a few dozen holds the key; every other device only encrypts under it.

Why sortition, and from what. If the server chose the committee, it would choose its accomplices. Sortition from
public data alone (the registered keys, the run id) does not help either: the server picks the run id and can try
millions offline. So the seed comes from the devices, by commit and reveal (the *draw*):

    commit   every connected device draws 32 bytes r_i from its CSPRNG and answers H(id_i, r_i)
    reveal   the server freezes the list L of (id, commitment) it received and sends it to every candidate; a
             candidate whose own commitment is in L once reveals r_i, signed together with L's digest, once per
             draw (a second list for the same draw is refused)
    seed     H(digest(L), r_1, ..., r_m): uniform as long as one candidate is honest, and fixed before any reveal
             is seen: the server's only move after seeing reveals is to abort, which costs a new draw

The committee is the ``size`` candidates with the lowest ticket H(seed, id): a uniformly random subset of L.

What that buys, in numbers. Say up to ``colluders`` registered devices are the server's accomplices, all of them in
L. The chance that a random committee of ``size`` from ``candidates`` holds t or more of them is the hypergeometric
tail :func:`capture_risk`. A device accepts a committee only if that chance, times the number of draws it has
taken part in this run (each abort is another try for the server), is at most its policy's ``max_capture_risk``.
A server that shrinks L towards its accomplices raises the risk, and the devices refuse. Under our base trust
model (at most t - 1 accomplices) no committee, drawn or chosen, holds t of them; the draw is what lets a device
assume a *share* of the fleet instead.

Every holder checks the transcript before it deals; every other device checks it before it encrypts under the key
(:meth:`Draw.verify` recomputes the committee from signed reveals only). An auditor reads the candidates, the
assumed colluders and the draw's number from the key statement that every holder signed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.merkle import MerkleTree
from ledger.signing import KEYGEN_TAG, NO_DP, SignedFields, length_prefixed, payload_digest
from ledger.verification import AllowList, Domain, verify_statement

DRAW_STEP = 6
"""The ``round`` field of a draw reveal's signature (key-ceremony steps are 1 to 5)."""
MAX_CANDIDATES = 100_000
MAX_COMMITTEE = 256
MIN_COMMITTEE = 3
DEFAULT_MAX_CAPTURE_RISK = 1e-6
"""A device's default: the chance that one draw gives its accomplices t seats, times the draws so far."""


class DrawError(LedgerError):
    """A committee draw that does not verify: a reveal that is not signed or does not open its commitment, a list
    that does not hold a device once, or a committee that is not the one the seed picks."""


def commitment(client_id: str, secret: bytes) -> bytes:
    """What a device answers in the commit step: it binds the device to ``secret`` without telling it."""
    return hashlib.sha256(b"fedproof/draw/commit\x00" + length_prefixed(client_id) + secret).digest()


def list_entry(candidate: str, commitment_: bytes) -> bytes:
    """One leaf of the frozen list's Merkle tree: a candidate's id and its commitment."""
    return length_prefixed(candidate) + commitment_


def list_tree(candidates: Sequence[str], commitments: Sequence[bytes]) -> MerkleTree:
    return MerkleTree([list_entry(c, m) for c, m in zip(candidates, commitments, strict=True)])


def digest_of(count: int, root: bytes) -> bytes:
    """The frozen list's digest, from its size and its Merkle root: a candidate checks its own entry with a proof
    (a log-size message, not the whole list, which at 10,000 candidates would be 400 KB to each)."""
    return hashlib.sha256(b"fedproof/draw/list\x00" + struct.pack(">Q", count) + root).digest()


def list_digest(candidates: Sequence[str], commitments: Sequence[bytes]) -> bytes:
    """The frozen list L's digest: every candidate's id and commitment."""
    return digest_of(len(candidates), list_tree(candidates, commitments).root)


def reveal_chunks(draw: int, digest: bytes, secret: bytes) -> list[bytes]:
    """What a candidate signs when it reveals: its secret, for this draw of this run, to this list only."""
    return [b"draw-reveal", struct.pack(">Q", draw), digest, secret]


def reveal_fields(domain: Domain, client_id: str, draw: int, digest: bytes, secret: bytes) -> SignedFields:
    return SignedFields(chain_id=domain.chain_id, contract=domain.contract, run_id=domain.run_id, round=DRAW_STEP,
                        client_id=client_id, payload_sha256=payload_digest(reveal_chunks(draw, digest, secret)),
                        num_examples=0, epsilon_scaled=NO_DP, tag=KEYGEN_TAG, genesis=domain.genesis)


def ticket(seed: bytes, client_id: str) -> bytes:
    return hashlib.sha256(b"fedproof/draw/ticket\x00" + seed + length_prefixed(client_id)).digest()


@functools.lru_cache(maxsize=16)
def pick(seed: bytes, candidates: tuple[str, ...], size: int) -> tuple[str, ...]:
    """The committee: the ``size`` candidates with the lowest tickets, sorted by id (a pure function, remembered:
    every device of a fleet recomputes it, and in a simulation they share processes)."""
    return tuple(sorted(sorted(candidates, key=lambda c: ticket(seed, c))[:size]))


def majority(parties: int) -> int:
    return parties // 2 + 1


def capture_risk(candidates: int, colluders: int, size: int, threshold: int) -> float:
    """The chance that ``threshold`` or more of a uniformly drawn committee of ``size`` out of ``candidates`` are
    among ``colluders`` of them (the hypergeometric tail). 0 when there are fewer colluders than ``threshold``."""
    bad = min(colluders, candidates)
    if bad < threshold or size > candidates:
        return 0.0 if bad < threshold else 1.0
    total = math.comb(candidates, size)
    tail = sum(math.comb(bad, k) * math.comb(candidates - bad, size - k) for k in range(threshold, min(bad, size) + 1))
    return tail / total


def committee_size(candidates: int, colluders: int, max_risk: float, draws: int = 1) -> int:
    """The smallest committee (t a majority of it) whose capture risk over ``draws`` draws is within ``max_risk``;
    raises :class:`DrawError` when even :data:`MAX_COMMITTEE` is not."""
    for size in range(MIN_COMMITTEE, min(MAX_COMMITTEE, candidates) + 1):
        if capture_risk(candidates, colluders, size, majority(size)) * draws <= max_risk:
            return size
    raise DrawError(f"no committee of up to {min(MAX_COMMITTEE, candidates)} of {candidates} candidates keeps the "
                    f"risk that {colluders} colluders hold a majority of it within {max_risk:g}: draw from more "
                    "candidates (connect more devices), or assume fewer colluders")


def check_risk(candidates: int, colluders: int, size: int, threshold: int, draws: int, max_risk: float) -> float:
    """The committee's capture risk over ``draws`` draws; :class:`DrawError` if above ``max_risk``."""
    risk = capture_risk(candidates, colluders, size, threshold) * max(1, draws)
    if risk > max_risk:
        raise DrawError(f"a {threshold}-of-{size} committee drawn from {candidates} candidates, {colluders} of whom "
                        f"may collude, after {draws} draw(s): the chance they hold t seats is {risk:.2g}, above "
                        f"{max_risk:g}")
    return risk


@functools.lru_cache(maxsize=8)
def _opened_list_digest(candidates: tuple[str, ...], secrets: tuple[bytes, ...]) -> bytes:
    """The digest of the list the secrets open (pure, remembered like :func:`pick`)."""
    return list_digest(candidates, [commitment(c, s) for c, s in zip(candidates, secrets)])


_VERIFIED_DRAWS: dict[tuple, AllowList] = {}


@dataclass(frozen=True)
class Draw:
    """A draw's transcript: the frozen list (ids sorted, each with its revealed secret) and each candidate's signed
    reveal. Everything a verifier needs to recompute the seed and the committee; nothing from the server is taken
    on trust (a commitment is recomputed from the secret, a reveal's signature is the candidate's)."""

    number: int
    candidates: tuple[str, ...]
    secrets: tuple[bytes, ...]
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.candidates) <= MAX_CANDIDATES or self.number < 1:
            raise DrawError(f"a draw has 1..{MAX_CANDIDATES} candidates and a number from 1")
        if not (len(self.candidates) == len(self.secrets) == len(self.signatures)):
            raise DrawError("a draw's candidates, secrets and signatures do not line up")
        if list(self.candidates) != sorted(set(self.candidates)):
            raise DrawError("a draw lists its candidates once each, sorted")
        if any(len(s) != 32 for s in self.secrets) or any(len(s) != 64 for s in self.signatures):
            raise DrawError("a draw's secrets are 32 bytes and its signatures 64")

    @functools.cached_property
    def digest(self) -> bytes:
        """L's digest, from the commitments each secret opens."""
        return _opened_list_digest(self.candidates, self.secrets)

    @functools.cached_property
    def seed(self) -> bytes:
        return hashlib.sha256(b"fedproof/draw/seed\x00" + self.digest + b"".join(self.secrets)).digest()

    def committee(self, size: int) -> tuple[str, ...]:
        return pick(self.seed, self.candidates, size)

    def verify(self, allow: AllowList, domain: Domain) -> None:
        """Raise :class:`DrawError` unless every candidate is allowed and signed its reveal to this list, for this
        draw of this run. A process remembers the transcripts it verified against the same allow-list object and
        domain (``AllowList.load`` gives one object per allow-list file content): a simulated fleet's devices
        share processes, and each would otherwise check 10,000 reveals again."""
        remembered = (self.number, self.candidates, self.secrets, self.signatures, id(allow), domain)  # compared whole
        if _VERIFIED_DRAWS.get(remembered) is allow:
            return
        digest = self.digest
        for client, secret, signature in zip(self.candidates, self.secrets, self.signatures):
            fields = reveal_fields(domain, client, self.number, digest, secret)
            try:
                verify_statement(allow, domain, fields, signature, tag=KEYGEN_TAG, round=DRAW_STEP, client_id=client,
                                 payload_sha256=fields.payload_sha256)
            except LedgerError as exc:
                raise DrawError(f"draw {self.number}: {client}'s reveal does not verify: {exc}") from exc
        _VERIFIED_DRAWS[remembered] = allow  # the allow-list is kept alive with its id
        if len(_VERIFIED_DRAWS) > 8:
            _VERIFIED_DRAWS.pop(next(iter(_VERIFIED_DRAWS)))

    def to_record(self) -> dict:
        """As a ConfigRecord's values."""
        return {"number": self.number, "candidates": list(self.candidates), "secrets": list(self.secrets),
                "signatures": list(self.signatures)}

    @classmethod
    def from_record(cls, record) -> Draw:
        try:
            number = record["number"]
            values = [list(record[k]) for k in ("candidates", "secrets", "signatures")]
        except (KeyError, TypeError) as exc:
            raise DrawError(f"not a draw transcript: {exc}") from exc
        if type(number) is not int or not all(isinstance(c, str) for c in values[0]) or \
                not all(isinstance(b, bytes) for v in values[1:] for b in v):
            raise DrawError("a draw transcript's number, ids or bytes have the wrong types")
        return cls(number, tuple(values[0]), tuple(values[1]), tuple(values[2]))
