"""The dealer-free key ceremony of threshold CKKS, one party's side: pure functions of what the party holds and
what the server relayed to it. Actively secure against the server with up to t - 1 accomplice parties (see README,
"Security argument"); Mouchet et al. (PETS 2021) prove their protocol against passive parties only, and the steps
marked * are what closes the gap.

    1. hello    a party draws its secret s_i, an X25519 key for receiving shares, and 32 random bytes towards
                the common random polynomial; it announces the last two (signed).
    2. commit*  given everyone's signed hello: the CRP seed hashes every contribution (no one, the server
                included, chooses a), the party computes its deal (public-key share p0_i = -a s_i + e_i and its
                Shamir shares f_i(x_k), each sealed to party k) and announces only a hash commitment to it.
    3. reveal*  given every party's signed commitment (the frozen set): the party reveals its deal, signing it
                together with the set's digest. It reveals once, to one set: a rogue dealer who waits for the
                honest shares before choosing its own cannot, since its own is fixed in the set already.
    4. finish   given every deal: each must open its commitment and every dealer must have revealed to the same
                set; the party opens the shares sealed to it and computes the joint key pk = sum p0_i itself
                and its threshold share tsk_k = sum_i f_i(x_k). A share that does not open is not the
                recipient's fault: the party instead files a :class:`Complaint* <Complaint>` that reveals its
                X25519 key of this attempt, so anyone can check which of the two lied (:func:`judge`), and the
                attempt ends (the next one starts with fresh secrets, so the revealed key protects nothing).
    5. confirm  (client layer) the party uses its key only once every holder signed the same key statement.

The server relays bytes and learns public values only: the hellos, the commitments, the public-key shares,
sealed shares it cannot open. Signatures over each step (ledger.signing) are the client layer's; here the payloads
that are signed are defined (:meth:`Hello.chunks`, :func:`commitment_chunks`, :func:`reveal_chunks`,
:meth:`Complaint.chunks`).

Sealing a share (an ECIES): a fresh X25519 key per share, HKDF-SHA256 of the shared secret, ChaCha20-Poly1305
with the sender, the recipient and the CRP seed as associated data, so a sealed share opens only for its
recipient, in this ceremony, as coming from its sender.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.errors import ContextError
from privacy.ring import U64
from privacy.threshold import (
    JointPublicKey,
    SecretShare,
    ThresholdParams,
    check_public_key_share,
    combine_dealt,
    common_random_polynomial,
    crp_seed,
    public_key_share,
    shamir_deal,
)

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
SHARE_INFO = b"fedproof/keyshare/v1"
MAX_PARTIES = 256


class CeremonyError(ContextError):
    """A ceremony step cannot go on: a missing or inconsistent party, a share that does not open."""


def party_points(parties) -> dict[str, int]:
    """Each party's public Shamir point: 1..n in id order."""
    return {party: i + 1 for i, party in enumerate(sorted(parties))}


def check_threshold(threshold: int, parties: int) -> None:
    """A device takes part only if no fewer than a majority (and at least 2) must join to decrypt."""
    if parties < 2 or parties > MAX_PARTIES:
        raise CeremonyError(f"a threshold key needs 2..{MAX_PARTIES} parties, got {parties}")
    if not max(2, parties // 2 + 1) <= threshold <= parties:
        raise CeremonyError(f"threshold {threshold} of {parties}: a device requires a majority (at least "
                            f"{max(2, parties // 2 + 1)}) and no more than the parties")


# ----------------------------------------------------------------------------------------- step 1

@dataclass(frozen=True)
class Hello:
    party: str
    contribution: bytes
    """32 random bytes towards the CRP seed."""
    exchange_key: bytes
    """The party's X25519 public key, for the shares sealed to it."""

    def chunks(self) -> list[bytes]:
        return [b"hello", self.party.encode(), self.contribution, self.exchange_key]

    def __post_init__(self) -> None:
        if len(self.contribution) != 32 or len(self.exchange_key) != 32:
            raise CeremonyError(f"party {self.party!r}: a hello holds 32 bytes of contribution and a 32-byte key")


@dataclass(frozen=True)
class PartySecrets:
    """What a party keeps on its device between the steps (never sent)."""

    secret: SecretShare
    exchange_private: bytes

    def to_bytes(self) -> bytes:
        return self.exchange_private + self.secret.coefficients.astype(np.int8).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, params: ThresholdParams) -> PartySecrets:
        if len(data) != 32 + params.n:
            raise CeremonyError("stored ceremony secrets are damaged")
        coefficients = np.frombuffer(data[32:], dtype=np.int8).astype(np.int64)
        if np.any(np.abs(coefficients) > 1):
            raise CeremonyError("stored ceremony secrets are damaged")
        return cls(SecretShare(coefficients), data[:32])


def hello(params: ThresholdParams, party: str) -> tuple[Hello, PartySecrets]:
    private = X25519PrivateKey.generate()
    secrets = PartySecrets(SecretShare.generate(params), private.private_bytes_raw())
    return Hello(party, os.urandom(32), private.public_key().public_bytes(*_RAW)), secrets


# ----------------------------------------------------------------------------------------- steps 2 and 3

@dataclass(frozen=True)
class Deal:
    party: str
    public_share: np.ndarray
    """p0_i, shape (2, N) uint64."""
    sealed: Mapping[str, bytes]
    """Recipient -> its Shamir share, sealed to it."""

    def chunks(self) -> list[bytes]:
        return deal_chunks(self.party, self.public_share, sealed_hashes(self.sealed))


def sealed_hashes(sealed: Mapping[str, bytes]) -> dict[str, bytes]:
    return {r: hashlib.sha256(s).digest() for r, s in sealed.items()}


def deal_chunks(party: str, public_share: np.ndarray, hashes: Mapping[str, bytes]) -> list[bytes]:
    """What a dealer signs: its public-key share and, per recipient, the hash of the share sealed to it (so each
    recipient checks the signature from its own sealed share and the others' hashes)."""
    return [b"deal", party.encode(), np.asarray(public_share).astype("<u8").tobytes()] + [
        part for r in sorted(hashes) for part in (r.encode(), hashes[r])]


def deal(params: ThresholdParams, party: str, secrets: PartySecrets, hellos: Mapping[str, Hello], threshold: int
         ) -> Deal:
    check_threshold(threshold, len(hellos))
    if party not in hellos or hellos[party].exchange_key != _public(secrets.exchange_private):
        raise CeremonyError(f"party {party!r}: the relayed hellos do not hold this device's own")
    seed, crp = ceremony_crp(params, hellos)
    points = party_points(hellos)
    shares = shamir_deal(params, secrets.secret, points, threshold)
    sealed = {r: seal_share(hellos[r].exchange_key, party, r, seed, shares[r]) for r in points}
    return Deal(party, public_key_share(params, secrets.secret, crp), sealed)


def ceremony_crp(params: ThresholdParams, hellos: Mapping[str, Hello]) -> tuple[bytes, list[np.ndarray]]:
    seed = crp_seed({p: h.contribution for p, h in hellos.items()})
    return seed, common_random_polynomial(params, seed)


def _hash(domain: bytes, chunks) -> bytes:
    h = hashlib.sha256(domain)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "big") + chunk)
    return h.digest()


def deal_commitment(party: str, public_share: np.ndarray, hashes: Mapping[str, bytes]) -> bytes:
    """The hash a dealer commits to in step 2: over everything its deal signs (its public-key share and each
    sealed share's hash). p0_i holds s_i's entropy, so the hash hides it (random oracle)."""
    return _hash(b"fedproof/deal-commitment/v1\x00", deal_chunks(party, public_share, hashes))


def commitment_chunks(party: str, commitment: bytes) -> list[bytes]:
    return [b"commit", party.encode(), commitment]


def commitment_set_digest(commitments: Mapping[str, bytes]) -> bytes:
    """The frozen set of every party's commitment, in id order: what each reveal signs."""
    return _hash(b"fedproof/commitment-set/v1\x00", [part for p in sorted(commitments)
                                                      for part in (p.encode(), commitments[p])])


def reveal_chunks(party: str, public_share: np.ndarray, hashes: Mapping[str, bytes], set_digest: bytes
                  ) -> list[bytes]:
    """What a dealer signs as it reveals: its deal, and the commitment set it reveals to."""
    return deal_chunks(party, public_share, hashes) + [b"to-commitments", set_digest]


def check_commitments(party: str, own: bytes, commitments: Mapping[str, bytes], hellos: Mapping[str, Hello]
                      ) -> bytes:
    """The digest of a relayed commitment set, if it is one commitment per party of the ceremony and holds this
    party's own as it made it."""
    if set(commitments) != set(hellos):
        raise CeremonyError("the commitment set does not hold exactly one commitment per party of the ceremony")
    if commitments.get(party) != own:
        raise CeremonyError(f"party {party!r}: the commitment set does not hold this device's own commitment")
    if any(not isinstance(c, bytes) or len(c) != 32 for c in commitments.values()):
        raise CeremonyError("a commitment is 32 bytes")
    return commitment_set_digest(commitments)


# ----------------------------------------------------------------------------------------- step 4

@dataclass(frozen=True)
class Complaint:
    """Party ``party`` could not open (or use) the share ``dealer`` sealed to it. It reveals its X25519 key of this
    attempt, which :func:`judge` checks against its signed hello: then anyone can try the share itself."""

    party: str
    dealer: str
    exchange_private: bytes

    def chunks(self) -> list[bytes]:
        return [b"complaint", self.party.encode(), self.dealer.encode(), self.exchange_private]


def judge(params: ThresholdParams, complaint: Complaint, complainer: Hello, sealed: bytes, seed: bytes) -> str:
    """Who broke the ceremony: the dealer, if the share it sealed (as it signed its hash) does not open with the
    complainer's revealed key or is not a share; the complainer, if it revealed a key that is not its announced
    one or the share opens after all."""
    if len(complaint.exchange_private) != 32 or _public(complaint.exchange_private) != complainer.exchange_key:
        return complaint.party
    try:
        open_share(params, complaint.exchange_private, complaint.dealer, complaint.party, seed, sealed)
    except CeremonyError:
        return complaint.dealer
    return complaint.party


@dataclass(frozen=True)
class KeyHolding:
    """A party's part of the federation's key, kept on its device for the run: the joint public key it checked,
    its threshold share, and who else holds one (ids -> Shamir points)."""

    party: str
    points: Mapping[str, int]
    threshold: int
    public_key: JointPublicKey
    share: np.ndarray
    """tsk_k in NTT form mod q: a Shamir share of s, useless below ``threshold`` holders."""

    @property
    def x(self) -> int:
        return self.points[self.party]


def finish(params: ThresholdParams, party: str, secrets: PartySecrets, hellos: Mapping[str, Hello],
           deals: Mapping[str, tuple[np.ndarray, bytes]], threshold: int) -> KeyHolding | Complaint:
    """``deals``: every party's (public-key share, the share it sealed to this party), each already checked
    against its commitment. A share that does not open gives a :class:`Complaint` about its dealer, not a key."""
    check_threshold(threshold, len(hellos))
    if set(deals) != set(hellos):
        missing = sorted(set(hellos) - set(deals))[:3]
        raise CeremonyError(f"deals from {len(deals)} of {len(hellos)} parties (missing {missing})")
    seed, crp = ceremony_crp(params, hellos)
    dealt = []
    for sender in sorted(deals):
        public, sealed = deals[sender]
        check_public_key_share(params, public)
        try:
            dealt.append(open_share(params, secrets.exchange_private, sender, party, seed, sealed))
        except CeremonyError:
            return Complaint(party, sender, secrets.exchange_private)
    pk = JointPublicKey.combine(params, [deals[p][0] for p in sorted(deals)], crp)
    return KeyHolding(party, party_points(hellos), threshold, pk, combine_dealt(params, dealt))


# ----------------------------------------------------------------------------------------- sealing

def seal_share(recipient_key: bytes, sender: str, recipient: str, seed: bytes, share: np.ndarray) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    key = _key(ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_key)))
    public = ephemeral.public_key().public_bytes(*_RAW)
    return public + ChaCha20Poly1305(key).encrypt(bytes(12), share.astype("<u8").tobytes(),
                                                  _aad(sender, recipient, seed, public))


def open_share(params: ThresholdParams, private: bytes, sender: str, recipient: str, seed: bytes, sealed: bytes
               ) -> np.ndarray:
    if not isinstance(sealed, (bytes, bytearray)) or len(sealed) != 32 + 8 * params.n + 16:
        raise CeremonyError(f"the share sealed by {sender!r} has the wrong size")
    public = bytes(sealed[:32])
    try:
        key = _key(X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public)))
        raw = ChaCha20Poly1305(key).decrypt(bytes(12), bytes(sealed[32:]), _aad(sender, recipient, seed, public))
    except (InvalidTag, ValueError) as exc:
        raise CeremonyError(f"the share sealed by {sender!r} does not open for this party and ceremony") from exc
    share = np.frombuffer(raw, dtype="<u8").astype(U64)
    if np.any(share >= params.q):
        raise CeremonyError(f"the share sealed by {sender!r} is not a share")
    return share


def _key(shared: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SHARE_INFO).derive(shared)


def _aad(sender: str, recipient: str, seed: bytes, ephemeral: bytes) -> bytes:
    return b"\x00".join([SHARE_INFO, sender.encode(), recipient.encode(), seed, ephemeral])


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*_RAW)
