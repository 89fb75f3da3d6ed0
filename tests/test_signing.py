"""Signatures, the allow-list gate and Merkle proofs."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproof.base.files import write_atomically
from ledger.errors import (
    BadSignature,
    DuplicateUpdate,
    KeyFileError,
    MerkleProofError,
    PayloadMismatch,
    ReplayedUpdate,
    RevokedClient,
    UnknownClient,
)
from ledger.merkle import EMPTY_ROOT, MerkleTree, verify_proof
from ledger.signing import SignedFields, SigningKey, payload_digest, scale_epsilon
from ledger.verification import Domain, AllowList, UpdateVerifier

CONTRACT = bytes(range(20))
KEYS = {cid: SigningKey.generate() for cid in ("0", "1", "2")}
ALLOW = AllowList({cid: k.public_key for cid, k in KEYS.items()})


def signed(client: str = "0", round: int = 1, payload: bytes = b"ciphertext", **changes):
    fields = SignedFields(chain_id=31337, contract=CONTRACT, run_id="run-a", round=round, client_id=client,
                          payload_sha256=payload_digest([payload]), num_examples=100,
                          epsilon_scaled=scale_epsilon(1.25))
    fields = dataclasses.replace(fields, **changes)
    return fields, KEYS.get(client, SigningKey.generate()).sign(fields)


def verifier() -> UpdateVerifier:
    return UpdateVerifier(ALLOW, Domain(31337, CONTRACT, "run-a"))


def test_a_genuine_update_passes_and_returns_the_signer_key() -> None:
    fields, sig = signed()
    assert verifier().verify(fields, sig, payload_digest([b"ciphertext"]), 1) == KEYS["0"].public_key


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: (dataclasses.replace(signed()[0], num_examples=10_000), signed()[1]), BadSignature),  # altered
        (lambda: (signed()[0], KEYS["1"].sign(signed()[0])), BadSignature),  # signed by someone else
        (lambda: signed(client="intruder"), UnknownClient),
        (lambda: signed(round=2), ReplayedUpdate),  # another round
        (lambda: signed(run_id="run-b"), ReplayedUpdate),  # another run
        (lambda: signed(chain_id=1), ReplayedUpdate),  # another chain
        (lambda: signed(contract=bytes(20)), ReplayedUpdate),  # another deployment
        (lambda: signed(payload=b"other bytes"), PayloadMismatch),
    ],
)
def test_forged_replayed_and_unknown_updates_are_rejected_and_counted(make, error) -> None:
    v = verifier()
    fields, sig = make()
    with pytest.raises(error):
        v.verify(fields, sig, payload_digest([b"ciphertext"]), 1)
    assert sum(v.rejected.values()) == 1 and v.rejected[error.reason] == 1


def test_second_update_in_a_round_is_rejected_but_next_round_is_fine() -> None:
    v = verifier()
    fields, sig = signed()
    v.verify(fields, sig, payload_digest([b"ciphertext"]), 1)
    with pytest.raises(DuplicateUpdate):
        v.verify(fields, sig, payload_digest([b"ciphertext"]), 1)
    fields2, sig2 = signed(round=2)
    v.verify(fields2, sig2, payload_digest([b"ciphertext"]), 2)


def test_revoked_client_is_rejected() -> None:
    v = UpdateVerifier(ALLOW.revoke("1"), Domain(31337, CONTRACT, "run-a"))
    with pytest.raises(RevokedClient):
        v.verify(*signed(client="1"), payload_digest([b"ciphertext"]), 1)


def test_canonical_bytes_are_unambiguous() -> None:
    a = signed(client="1", run_id="run-a")[0]
    b = dataclasses.replace(a, client_id="", run_id="run-a1")  # same concatenated text, different fields
    assert a.canonical_bytes() != b.canonical_bytes()
    assert payload_digest([b"ab", b"c"]) != payload_digest([b"a", b"bc"])
    assert scale_epsilon(None) == 2**64 - 1 and scale_epsilon(0.1234561) == 123457


def test_keys_and_allow_list_round_trip_and_bad_files_are_refused(tmp_path: Path) -> None:
    path = write_atomically(tmp_path / "client.pem", KEYS["0"].to_pem(), private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).public_key == KEYS["0"].public_key
    allow = write_atomically(tmp_path / "allow.json", ALLOW.revoke("2").to_json().encode(), private=True)
    assert AllowList.load(allow) == ALLOW.revoke("2")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(KeyFileError):
        SigningKey.load(tmp_path / "bad.pem")
    (tmp_path / "bad.json").write_text('{"version": 1, "clients": {"0": "abcd"}}')
    with pytest.raises(KeyFileError):
        AllowList.load(tmp_path / "bad.json")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=70, unique=True))
def test_every_leaf_proves_membership_and_nothing_else_does(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    assert MerkleTree(list(reversed(leaves))).root == tree.root  # order does not matter
    for leaf in leaves:
        verify_proof(tree.root, leaf, tree.proof(leaf))
    forged = leaves[0] + b"\x01"
    if forged not in leaves:
        with pytest.raises(MerkleProofError):
            verify_proof(tree.root, forged, tree.proof(leaves[0]))
    if len(leaves) > 1:  # an inner node cannot pass for a leaf
        inner = tree.levels[1][0]
        with pytest.raises(MerkleProofError):
            verify_proof(tree.root, inner, tree.proof(leaves[0])[1:])
        with pytest.raises(MerkleProofError):  # a proof for one leaf does not prove another
            verify_proof(tree.root, leaves[1], tree.proof(leaves[0]) if tree.proof(leaves[0]) != tree.proof(
                leaves[1]) else [b"\0" * 32])


def test_empty_round_has_the_zero_root() -> None:
    assert MerkleTree([]).root == EMPTY_ROOT


def test_a_device_signs_only_for_the_chain_genesis_and_contract_it_pins(tmp_path: Path) -> None:
    """The run config names the ledger; a device with a pin (its kit's trust.json) refuses any other one."""
    from flwr.app import Context, RecordDict

    from fedproof.core.config import RunConfig
    from fedproof.base.errors import ConfigError
    from fl_client.signing import domain
    from ledger.trust import LedgerTrust

    genesis = bytes(range(32))
    pin = tmp_path / "trust.json"
    pin.write_text(LedgerTrust(31337, genesis, CONTRACT, b"\x01" * 32).to_json())
    device = Context(run_id=1, node_id=1, node_config={"client-id": "0", "ledger-trust": str(pin)},
                     state=RecordDict(), run_config={})
    honest = RunConfig(run_id="r", chain_id=31337, ledger_contract="0x" + CONTRACT.hex(),
                       chain_genesis="0x" + genesis.hex())
    assert domain(honest, device).genesis == genesis
    for other in (dataclasses.replace(honest, chain_genesis="0x" + "11" * 32),   # another devnet, same chain id
                  dataclasses.replace(honest, ledger_contract="0x" + "22" * 20),  # another contract
                  dataclasses.replace(honest, chain_id=1)):
        with pytest.raises(ConfigError, match="pinned"):
            domain(other, device)
