"""Runs whose co-signers the run's key statement on chain does or does not vouch for, built on a chain where five
clients (a..e) are registered: the server (with accomplices d and e where it needs them) writes the bundles and
records what it likes. Shared by tests/test_key_audit.py (``verify_model``) and tests/test_deploy.py (edge pull).

Each scenario records one started run's key statement(s) and round(s) through a :class:`Lineage` and returns the
fragment (a regular expression) the audit's refusal must contain, or None when the run is honest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedproof.core.weights import hash_model
from fl_server.lineage import Lineage
from ledger.bundle import SignedUpdate
from ledger.contract import LedgerContract
from ledger.key_statement import KeyStatement, SignedKeyStatement
from ledger.signing import SignedFields, SigningKey, payload_digest, run_id_hash
from rounds import endorse, key_statement, round_result

CLIENTS = ("a", "b", "c", "d", "e")
Keys = Mapping[str, SigningKey]


def model(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((2, 2), value, np.float32))})


def leaves(lin: Lineage, keys: Keys, rnd: int, clients: str = "abc") -> list[SignedUpdate]:
    """``clients``' signed updates of round ``rnd``, trained from ``model(rnd - 1)``."""
    config, out = lin.config, []
    for c in clients:
        fields = SignedFields(chain_id=config.chain_id, contract=config.contract_bytes(), run_id=config.run_id,
                              round=rnd, client_id=c, payload_sha256=payload_digest([f"{c}{rnd}".encode()]),
                              num_examples=10, genesis=config.genesis_bytes(),
                              parent_model_hash=hash_model(model(rnd - 1), config.run_id))
        out.append(SignedUpdate(fields, keys[c].public_key, keys[c].sign(fields)))
    return out


def cosigned_round(lin: Lineage, keys: Keys, rnd: int, key: SignedKeyStatement, signers: str,
                   claim: tuple[int, int] | None = None) -> None:
    """Round ``rnd`` (model(rnd - 1) -> model(rnd)) from a, b and c's updates, co-signed under ``key`` by
    ``signers``; the bundle states the key is ``claim`` = (t, n) (default: what the key says)."""
    updates = leaves(lin, keys, rnd)
    lin.record(round_result(rnd, model(rnd - 1), model(rnd), updates, endorsement=endorse(
        lin.config, rnd, model(rnd - 1), model(rnd), updates, {s: keys[s] for s in signers}, key, claim)))


def of(keys: Keys, holders: str) -> dict[str, SigningKey]:
    return {h: keys[h] for h in holders}


def record_raw_key(chain: LedgerContract, run_id: str, key_id: bytes, statement: bytes, signatures: bytes) -> None:
    """What a server may put in a ``KeyRecorded`` event, bypassing the wrapper's checks (the contract checks little)."""
    contract = chain.w3.eth.contract(address=chain.address, abi=chain.artifact.abi_list)
    tx = contract.functions.recordKey(run_id_hash(run_id), key_id, statement, signatures).transact(
        {"from": chain.sender, "gas": 500_000})
    assert chain.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


# --------------------------------------------------------------------------------------------- scenarios


def honest(lin: Lineage, keys: Keys) -> None:
    key = key_statement(lin.config, of(keys, "abcde"), 3)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abc")
    cosigned_round(lin, keys, 2, key, "cde")


def bundle_claims_2_of_2(lin: Lineage, keys: Keys) -> str:
    """The security review's attack: the bundle says "2-of-2", the two accomplices co-sign; the chain says 3-of-5."""
    key = key_statement(lin.config, of(keys, "abcde"), 3)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "de", claim=(2, 2))
    return r"round 1 .*2 client co-signature\(s\) of the new model; at least 3 are required"


def accomplices_name_their_own_key(lin: Lineage, keys: Keys) -> str:
    """The accomplices co-sign under a 2-of-2 key statement of their own, never recorded."""
    lin.record_key(key_statement(lin.config, of(keys, "abcde"), 3))
    own = key_statement(lin.config, of(keys, "de"), 2)
    cosigned_round(lin, keys, 1, own, "de")
    return r"round 1 .*the co-signers name key 0x[0-9a-f]+…, not the run's key in force on chain \(3-of-5 key"


def fewer_than_t(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcd"), 3)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "ab")
    return r"round 1 .*2 client co-signature\(s\) .*at least 3 are required \(the run's 3-of-4 key"


def a_co_signer_is_not_a_holder(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcd"), 3)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abe")  # t signatures, but e holds no share of this key
    return r"round 1 .*co-signer e: not a holder of the run's 3-of-4 key"


def a_holder_did_not_sign_the_key(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcde"), 3)
    key = SignedKeyStatement(key.statement, {**key.signatures, "e": bytes(64)})
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abc")
    return r"round 1 .*no key statement on chain for run .* key holder 'e' did not sign this key statement"


def a_holder_signed_with_another_key(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcde"), 3, signers={"e": SigningKey.generate()})
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abc")
    return r"no key statement on chain for run .* key holder 'e' did not sign this key statement"


def key_signed_for_another_run(lin: Lineage, keys: Keys) -> str:
    elsewhere = key_statement(dataclasses.replace(lin.config, run_id="another"), of(keys, "abcde"), 3)
    lin.record_key(elsewhere)
    cosigned_round(lin, keys, 1, elsewhere, "abc")
    return r"no key statement on chain for run .* did not sign this key statement"


def a_holder_is_not_registered(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, {**of(keys, "abc"), "x": SigningKey.generate()}, 3)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abc")
    return r"no key statement on chain for run .* key holder 'x' is not a registered client"


def t_below_a_majority_of_holders(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcd"), 2)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "ab")
    return r"no key statement on chain for run .* a 2-of-4 key: .*t a majority of its holders"


def coalition_key(lin: Lineage, keys: Keys) -> str:
    """Two registered accomplices of five sign a 2-of-2 key statement of their own; the server records it."""
    key = key_statement(lin.config, of(keys, "de"), 2)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "de")
    return r"no key statement on chain for run .* a 2-of-2 key: a key must be held by a majority of the 5 registered"


def coalition_key_after_the_honest_one(lin: Lineage, keys: Keys) -> str:
    """The coalition's key recorded after the run's honest one: the latest, but not a valid one."""
    lin.record_key(key_statement(lin.config, of(keys, "abcde"), 3))
    coalition = key_statement(lin.config, of(keys, "de"), 2)
    lin.record_key(coalition)
    cosigned_round(lin, keys, 1, coalition, "de")
    return r"round 1 .*the co-signers name key 0x[0-9a-f]+…, which the chain refuses: a 2-of-2 key: .*majority of the 5"


def key_recorded_after_the_round(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcde"), 3)
    cosigned_round(lin, keys, 1, key, "abc")
    lin.record_key(key)  # too late: a round is decrypted under a key on chain before it
    return r"round 1 .*no key statement on chain for run '[^']+' in force at this round"


def key_for_later_rounds_only(lin: Lineage, keys: Keys) -> str:
    key = key_statement(lin.config, of(keys, "abcde"), 3, first_round=2)
    lin.record_key(key)
    cosigned_round(lin, keys, 1, key, "abc")
    return r"round 1 .*no key statement on chain for run .* in force at this round"


def malformed_key_bytes(lin: Lineage, keys: Keys) -> str:
    good = key_statement(lin.config, of(keys, "abcde"), 3)
    run = lin.config.run_id
    record_raw_key(lin.contract, run, b"\x01" * 32, b"\x00\x00\x00\x03key" + b"\xff" * 40, bytes(64))
    record_raw_key(lin.contract, run, good.statement.sha256, good.statement.to_bytes(), bytes(64))  # 1 signature of 5
    record_raw_key(lin.contract, run, b"\x02" * 32, good.statement.to_bytes(), good.signatures_bytes())  # wrong id
    cosigned_round(lin, keys, 1, good, "abc")
    return (r"no key statement on chain for run .*not a key statement: .*not a key statement: .*carries 320 bytes of "
            r"signatures.*not a key statement: its key id 0x0202")


def rekeyed_honestly(lin: Lineage, keys: Keys) -> None:
    """A new key from round 2 on (first_round = 2), recorded before round 2: each round under its own key."""
    first = key_statement(lin.config, of(keys, "abcde"), 3)
    lin.record_key(first)
    cosigned_round(lin, keys, 1, first, "abc")
    second = SignedKeyStatement(KeyStatement(b"\x05" * 32, 2, ("a", "b", "c"), 1000, 2), {})
    second = dataclasses.replace(second, signatures={h: keys[h].sign(second.statement.fields(
        h, lin.config.chain_id, lin.config.contract_bytes(), lin.config.genesis_bytes(), lin.config.run_id))
        for h in "abc"})
    lin.record_key(second)
    cosigned_round(lin, keys, 2, second, "bc")


REFUSED: dict[str, Callable[[Lineage, Keys], str]] = {f.__name__: f for f in (
    bundle_claims_2_of_2, accomplices_name_their_own_key, fewer_than_t, a_co_signer_is_not_a_holder,
    a_holder_did_not_sign_the_key, a_holder_signed_with_another_key, key_signed_for_another_run,
    a_holder_is_not_registered, t_below_a_majority_of_holders, coalition_key, coalition_key_after_the_honest_one,
    key_recorded_after_the_round, key_for_later_rounds_only, malformed_key_bytes)}
