"""A narrow, typed web3 (v8) wrapper around the FedproofLedger contract.

Why it looks the way it does:

* Every write is sent from one account (``w3.eth.accounts[0]`` by default: anvil's unlocked dev account, or
  eth-tester's) with an explicit gas limit. Without one, web3 first runs ``eth_estimateGas``, which py-evm does by a
  slow binary search; with one, a reverting transaction is *mined with status 0 and raises nothing*. So each write is
  first run as an ``eth_call`` of the very same transaction: a revert there carries the contract's custom-error data,
  which is mapped (by its 4-byte selector, taken from the ABI) to a typed error with the decoded arguments. Only then
  is the transaction sent, and its receipt's status is still checked. This also makes both backends behave alike:
  anvil raises ``ContractCustomError`` while eth-tester raises its own ``TransactionFailed`` with the data in the text.
* Reads for audits come from event logs and receipts, filtered by indexed topics inside the node, not from contract
  storage: storage of a dev chain can be rewritten (``anvil_setStorageAt``) without a new block, logs cannot.
* A node that is not there (never started, or gone mid-run) becomes :class:`~ledger.errors.LedgerUnavailable`
  with a message that says what to do, never a raw ``requests`` traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import Web3RPCError

from ledger import chain, errors
from ledger.artifact import Artifact, load_artifact
from ledger.key_statement import KeyStatementError, SignedKeyStatement
from ledger.release import ReleaseStatement, SignedRelease


# Gas limits per write, with a wide margin over what was measured (recordRound ~137 k in steady state, deployment
# ~650 k). They only cap what a transaction may spend; unused gas is not charged.
DEPLOY_GAS = 1_500_000
REGISTER_GAS = 120_000
REVOKE_GAS = 80_000
RECORD_ROUND_GAS = 300_000
START_RUN_GAS = 80_000
DEPLOYMENT_BASE_GAS = 110_000  # the event, plus one cold SSTORE (deployedArtifact) of ~22 k
RELEASE_GAS = 120_000  # measured ~38 k: an SSTORE, the event with its 64-byte signature
KEY_BASE_GAS = 60_000  # measured ~41 k for a 5-holder statement (tests/test_key_audit.py)
KEY_GAS_PER_BYTE = 40  # calldata (16/byte) + memory + event data (8/byte), rounded up
DEPLOYMENT_GAS_PER_TARGET_BYTE = 100  # calldata (16/byte) + memory + event data (8/byte), rounded far up
MAX_TARGET_BYTES = 1024
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# --------------------------------------------------------------------------------------------- values


def _hash32(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        got = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise errors.LedgerValueError(f"{name} must be 32 bytes, got {got}")
    return bytes(value)


def _uint(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise errors.LedgerValueError(f"{name} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


@dataclass(frozen=True)
class RoundRecord:
    """What one FL round puts on chain. All hashes are 32 bytes; ``epsilon_max_scaled`` is epsilon x 10^6."""

    run_id: bytes
    round: int
    parent_model_hash: bytes
    model_hash: bytes
    updates_merkle_root: bytes
    num_updates: int
    epsilon_max_scaled: int
    bundle_hash: bytes

    def __post_init__(self) -> None:
        for name in ("run_id", "parent_model_hash", "model_hash", "updates_merkle_root", "bundle_hash"):
            object.__setattr__(self, name, _hash32(name, getattr(self, name)))
        _uint("round", self.round, UINT64_MAX)
        _uint("num_updates", self.num_updates, UINT32_MAX)
        _uint("epsilon_max_scaled", self.epsilon_max_scaled, UINT64_MAX)

    def as_record(self) -> RoundRecord:
        """The plain record (drops the receipt fields of a :class:`RecordedRound`)."""
        return RoundRecord(
            run_id=self.run_id,
            round=self.round,
            parent_model_hash=self.parent_model_hash,
            model_hash=self.model_hash,
            updates_merkle_root=self.updates_merkle_root,
            num_updates=self.num_updates,
            epsilon_max_scaled=self.epsilon_max_scaled,
            bundle_hash=self.bundle_hash,
        )


@dataclass(frozen=True)
class RecordedRound(RoundRecord):
    """A round as found in a ``RoundRecorded`` log, with the transaction, block and gas that carried it."""

    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int


@dataclass(frozen=True)
class Receipt:
    """The part of a mined transaction's receipt worth keeping (hashes as 0x-prefixed hex)."""

    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int


@dataclass(frozen=True)
class ClientEvent:
    """A ``ClientRegistered`` (with its key) or ``ClientRevoked`` log."""

    kind: Literal["registered", "revoked"]
    client_id: bytes
    public_key: bytes | None
    tx_hash: str
    block_number: int
    block_hash: str
    log_index: int


@dataclass(frozen=True)
class DeploymentEvent:
    """A ``DeploymentRecorded`` log: which model of which round was shipped as which artifact, to which target."""

    model_hash: bytes
    artifact_hash: bytes
    run_id: bytes
    round: int
    target: str
    tx_hash: str
    block_number: int
    block_hash: str


@dataclass(frozen=True)
class ReleaseEvent:
    """A ``ReleaseRecorded`` log: a release statement as recorded, with its Ed25519 signature, not yet checked."""

    sequence: int
    action: int
    channel: str
    artifact_hash: bytes
    previous_artifact_hash: bytes
    canary_bp: int
    signature: bytes
    tx_hash: str
    block_number: int
    block_hash: str

    def signed(self, chain_id: int, genesis: bytes, contract: bytes) -> SignedRelease:
        """The statement as signed for this chain and contract (:class:`~ledger.release.ReleaseError` if no valid
        statement has these fields); its signature is checked by :meth:`SignedRelease.verify`."""
        statement = ReleaseStatement(chain_id, genesis, contract, self.sequence, self.action, self.channel,
                                     self.artifact_hash, self.previous_artifact_hash, self.canary_bp)
        return SignedRelease(statement, self.signature)


@dataclass(frozen=True)
class RecordedKey:
    """A ``KeyRecorded`` log: a run's key statement and its holders' signatures as recorded, parsed but not yet
    checked (:meth:`SignedKeyStatement.verify` does that). ``signed`` is None when the bytes are not a key statement
    or ``key_id`` is not its digest; ``error`` then says why. Nothing here raises on what the log holds."""

    run_id: bytes
    key_id: bytes
    statement: bytes
    signatures: bytes
    signed: SignedKeyStatement | None
    error: str
    tx_hash: str
    block_number: int
    block_hash: str
    log_index: int


def _parse_key(key_id: bytes, statement: bytes, signatures: bytes) -> tuple[SignedKeyStatement | None, str]:
    try:
        signed = SignedKeyStatement.from_bytes(statement, signatures)
    except KeyStatementError as exc:
        return None, str(exc)
    if signed.statement.sha256 != key_id:
        return None, f"its key id 0x{key_id.hex()[:16]}… is not the statement's digest"
    return signed, ""


# --------------------------------------------------------------------------------------------- the wrapper


class LedgerContract:
    """One deployed FedproofLedger, used from one sending account."""

    def __init__(self, w3: Web3, address: str, *, sender: str | None = None, artifact: Artifact | None = None):
        """Prefer :meth:`deploy` or :meth:`at`; this constructor does not check the address holds our code.
        ``sender`` writes (default: the node's first unlocked account, looked up at the first write, so readers
        such as devices and auditors need none); see :func:`use_account` for a key of one's own."""
        self.w3 = w3
        self.artifact = artifact or load_artifact()
        self.address: str = Web3.to_checksum_address(address)
        self._url = chain.endpoint(w3)
        with self._node():
            self.chain_id: int = int(w3.eth.chain_id)
            self.genesis: bytes = bytes(w3.eth.get_block(0)["hash"])
        self._sender = Web3.to_checksum_address(sender) if sender else None
        self._contract = w3.eth.contract(address=self.address, abi=self.artifact.abi_list)
        self._errors = chain.error_specs(self.artifact.abi)
        self.deploy_receipt: Receipt | None = None

    @property
    def sender(self) -> str:
        if self._sender is None:
            with self._node():
                self._sender = Web3.to_checksum_address(chain.first_account(self.w3, self._url))
        return self._sender

    @property
    def domain(self) -> tuple[int, bytes, bytes]:
        """(chain id, genesis hash, 20-byte address): what every statement recorded here is signed for."""
        return self.chain_id, self.genesis, bytes.fromhex(self.address[2:])

    def __repr__(self) -> str:
        return f"LedgerContract(address={self.address}, chain_id={self.chain_id})"

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def deploy(cls, w3: Web3, *, sender: str | None = None) -> LedgerContract:
        """Deploy the committed artifact; the sender becomes the contract's owner."""
        artifact = load_artifact()
        url = chain.endpoint(w3)
        with chain.node_errors(url):
            account = Web3.to_checksum_address(sender or chain.first_account(w3, url))
            tx_hash = w3.eth.send_transaction({"from": account, "data": artifact.bytecode, "gas": DEPLOY_GAS})
            receipt = chain.wait(w3, tx_hash)
        if receipt["status"] != 1 or not receipt.get("contractAddress"):
            raise errors.LedgerTxFailed(
                f"deploying FedproofLedger failed in transaction {_hex(receipt['transactionHash'])} "
                f"(gas used {receipt['gasUsed']} of {DEPLOY_GAS})"
            )
        contract = cls(w3, receipt["contractAddress"], sender=account, artifact=artifact)
        contract.deploy_receipt = _receipt(receipt)
        return contract

    @classmethod
    def at(cls, w3: Web3, address: str, *, sender: str | None = None) -> LedgerContract:
        """Attach to an existing deployment, after checking that the code there is this build of the contract."""
        if not Web3.is_address(address):
            raise errors.LedgerValueError(f"{address!r} is not an Ethereum address")
        contract = cls(w3, address, sender=sender)
        with contract._node():
            code = bytes(w3.eth.get_code(contract.address))
        if not code:
            raise errors.ContractNotFound(
                f"no contract code at {contract.address} on chain {contract.chain_id} (at {contract._url}); "
                "the chain may have been reset: deploy the ledger again"
            )
        expected = bytes.fromhex(contract.artifact.deployed_bytecode[2:])
        # Immutables (the owner) are zero bytes in the artifact and filled in at deployment; all else must match.
        if len(code) != len(expected) or any(a != b and b != 0 for a, b in zip(code, expected)):
            raise errors.ContractMismatch(
                f"the code at {contract.address} on chain {contract.chain_id} is not this FedproofLedger build "
                f"(artifact sha256 {contract.artifact.sha256[:16]}...)"
            )
        return contract

    connect = staticmethod(chain.connect)
    in_memory = staticmethod(chain.in_memory)

    # ----------------------------------------------------------------------------- writes

    def register_client(self, client_id: bytes, public_key: bytes) -> Receipt:
        """Register a client's Ed25519 public key (set once; see ``ClientAlreadyRegistered``)."""
        args = [_hash32("client_id", client_id), _hash32("public_key", public_key)]
        return self._transact("registerClient", args, REGISTER_GAS)

    def revoke_client(self, client_id: bytes) -> Receipt:
        """Revoke a registered client; its key stays on chain so its earlier updates stay checkable."""
        return self._transact("revokeClient", [_hash32("client_id", client_id)], REVOKE_GAS)

    def start_run(self, run_id: bytes, initial_model_hash: bytes) -> Receipt:
        """Register the model a run starts from (once, before its first round)."""
        return self._transact("startRun", [_hash32("run_id", run_id), _hash32("initial_model_hash", initial_model_hash)],
                              START_RUN_GAS)

    def initial_model(self, run_id: bytes) -> bytes | None:
        """The run's registered initial model (current state), or None if it was never started."""
        value = bytes(self._view("initialModel", _hash32("run_id", run_id)))
        return None if value == bytes(32) else value

    def run_starts(self, *, run_id: bytes | None = None, initial_model_hash: bytes | None = None,
                   from_block: int = 0) -> list[tuple[bytes, bytes, int]]:
        """``RunStarted`` logs as (run id, initial model hash, block number), in chain order."""
        topics = [_topic(run_id, "run_id"), _topic(initial_model_hash, "initial_model_hash")]
        return [(bytes(args["runId"]), bytes(args["initialModelHash"]), int(log["blockNumber"]))
                for log, args in self._logs("RunStarted", topics, from_block)]

    def record_key(self, run_id: bytes, signed: SignedKeyStatement) -> Receipt:
        """Record a started run's key statement with every holder's signature (the contract checks neither)."""
        if not isinstance(signed, SignedKeyStatement):
            raise errors.LedgerValueError(f"signed must be a SignedKeyStatement, got {type(signed).__name__}")
        holders = signed.statement.holders
        if set(signed.signatures) != set(holders) or any(len(signed.signatures[h]) != 64 for h in holders):
            raise errors.LedgerValueError("a key statement is recorded with one 64-byte signature per holder")
        statement, signatures = signed.statement.to_bytes(), signed.signatures_bytes()
        args = [_hash32("run_id", run_id), signed.statement.sha256, statement, signatures]
        return self._transact("recordKey", args, KEY_BASE_GAS + KEY_GAS_PER_BYTE * (len(statement) + len(signatures)))

    def record_round(self, record: RoundRecord) -> Receipt:
        """Record one finished round; the contract enforces the order of rounds and the parent link."""
        if not isinstance(record, RoundRecord):
            raise errors.LedgerValueError(f"record must be a RoundRecord, got {type(record).__name__}")
        args = [
            record.run_id,
            record.round,
            record.parent_model_hash,
            record.model_hash,
            record.updates_merkle_root,
            record.num_updates,
            record.epsilon_max_scaled,
            record.bundle_hash,
        ]
        return self._transact("recordRound", args, RECORD_ROUND_GAS)

    def record_deployment(
        self, model_hash: bytes, artifact_hash: bytes, run_id: bytes, round: int, target: str
    ) -> Receipt:
        """Record that the model of (run, round) was shipped as the artifact with ``artifact_hash`` to ``target``."""
        if not isinstance(target, str):
            raise errors.LedgerValueError(f"target must be a string, got {type(target).__name__}")
        size = len(target.encode("utf-8"))
        if size > MAX_TARGET_BYTES:
            raise errors.LedgerValueError(f"target is {size} bytes in UTF-8; at most {MAX_TARGET_BYTES} are recorded")
        args = [
            _hash32("model_hash", model_hash),
            _hash32("artifact_hash", artifact_hash),
            _hash32("run_id", run_id),
            _uint("round", round, UINT64_MAX),
            target,
        ]
        return self._transact("recordDeployment", args, DEPLOYMENT_BASE_GAS + DEPLOYMENT_GAS_PER_TARGET_BYTE * size)

    def record_release(self, release: SignedRelease) -> Receipt:
        """Record a signed release statement (the contract takes sequence numbers 1, 2, 3, ... in order only)."""
        s = release.statement
        if len(release.signature) != 64:
            raise errors.LedgerValueError("a release statement's signature is 64 bytes (Ed25519)")
        args = [_uint("sequence", s.sequence, UINT64_MAX), int(s.action), s.channel,
                _hash32("artifact_hash", s.artifact), _hash32("previous_artifact_hash", s.previous),
                _uint("canary_bp", s.canary_bp, 10_000), release.signature]
        return self._transact("recordRelease", args, RELEASE_GAS)

    # ----------------------------------------------------------------------------- views

    def latest_release_sequence(self) -> int:
        """The sequence number of the last recorded release statement (0: none)."""
        return int(self._view("latestReleaseSequence"))

    def owner(self) -> str:
        """The account that deployed the contract: the only one that may write to it."""
        return Web3.to_checksum_address(self._view("owner"))

    def require_writer(self, hint: str = "") -> None:
        """Refuse, before any work, to go on when this wrapper's sender is not the owner (every write would revert)."""
        owner = self.owner()
        if owner != self.sender:
            raise errors.NotOwner(f"account {self.sender} is not the owner of the ledger contract {self.address} "
                                     f"({owner} is){hint}")

    def is_deployed(self, artifact_hash: bytes) -> bool:
        """Whether the artifact was recorded as a deployment of a recorded model."""
        return bool(self._view("deployedArtifact", _hash32("artifact_hash", artifact_hash)))

    def is_active_client(self, client_id: bytes) -> bool:
        """Registered and not revoked (current state; for history use :meth:`client_events`)."""
        return bool(self._view("isActiveClient", _hash32("client_id", client_id)))

    def client_key(self, client_id: bytes) -> bytes | None:
        """The client's registered Ed25519 public key, or None if it was never registered."""
        key = bytes(self._view("clientKeys", _hash32("client_id", client_id)))
        return None if key == bytes(32) else key

    def latest_round(self, run_id: bytes) -> int:
        """The last recorded round of the run (0: none yet)."""
        return int(self._view("latestRound", _hash32("run_id", run_id)))

    # ----------------------------------------------------------------------------- events

    def round_events(
        self, *, run_id: bytes | None = None, model_hash: bytes | None = None, from_block: int = 0,
        with_gas: bool = False,
    ) -> list[RecordedRound]:
        """``RoundRecorded`` logs in chain order, filtered in the node by the indexed run id and/or model hash.

        ``gas_used`` needs one receipt per transaction, so it is fetched only ``with_gas`` (else 0): audits walk
        thousands of rounds and need the logs alone."""
        topics = [
            _topic(run_id, "run_id"),
            None,  # round
            _topic(model_hash, "model_hash"),
        ]
        receipts: dict[bytes, Any] = {}
        out = []
        for log, args in self._logs("RoundRecorded", topics, from_block):
            tx = bytes(log["transactionHash"])
            if with_gas and tx not in receipts:
                with self._node():
                    receipts[tx] = self.w3.eth.get_transaction_receipt(tx)
            out.append(
                RecordedRound(
                    run_id=bytes(args["runId"]),
                    round=int(args["round"]),
                    parent_model_hash=bytes(args["parentModelHash"]),
                    model_hash=bytes(args["modelHash"]),
                    updates_merkle_root=bytes(args["updatesMerkleRoot"]),
                    num_updates=int(args["numUpdates"]),
                    epsilon_max_scaled=int(args["epsilonMaxScaled"]),
                    bundle_hash=bytes(args["bundleHash"]),
                    tx_hash=_hex(tx),
                    block_number=int(log["blockNumber"]),
                    block_hash=_hex(log["blockHash"]),
                    gas_used=int(receipts[tx]["gasUsed"]) if with_gas else 0,
                )
            )
        return out

    def key_events(self, run_id: bytes | None = None, *, key_id: bytes | None = None,
                   from_block: int = 0) -> list[RecordedKey]:
        """``KeyRecorded`` logs in chain order, filtered in the node by run and/or key id; each parsed (or flagged,
        never raising, when its bytes are not a key statement)."""
        topics = [_topic(run_id, "run_id"), _topic(key_id, "key_id")]
        out = []
        for log, args in self._logs("KeyRecorded", topics, from_block):
            key, statement, signatures = bytes(args["keyId"]), bytes(args["statement"]), bytes(args["signatures"])
            signed, error = _parse_key(key, statement, signatures)
            out.append(RecordedKey(
                run_id=bytes(args["runId"]), key_id=key, statement=statement, signatures=signatures, signed=signed,
                error=error, tx_hash=_hex(log["transactionHash"]), block_number=int(log["blockNumber"]),
                block_hash=_hex(log["blockHash"]), log_index=int(log["logIndex"]),
            ))
        return out

    def client_events(self, client_id: bytes | None = None, *, from_block: int = 0) -> list[ClientEvent]:
        """``ClientRegistered`` and ``ClientRevoked`` logs, merged in chain order."""
        topic = _topic(client_id, "client_id")
        found: list[tuple[int, int, ClientEvent]] = []
        for name, kind in (("ClientRegistered", "registered"), ("ClientRevoked", "revoked")):
            for log, args in self._logs(name, [topic], from_block):
                event = ClientEvent(
                    kind=kind,  # type: ignore[arg-type]
                    client_id=bytes(args["clientId"]),
                    public_key=bytes(args["publicKey"]) if kind == "registered" else None,
                    tx_hash=_hex(log["transactionHash"]),
                    block_number=int(log["blockNumber"]),
                    block_hash=_hex(log["blockHash"]),
                    log_index=int(log["logIndex"]),
                )
                found.append((event.block_number, event.log_index, event))
        return [event for _, _, event in sorted(found, key=lambda item: item[:2])]

    def deployment_events(
        self,
        *,
        model_hash: bytes | None = None,
        artifact_hash: bytes | None = None,
        run_id: bytes | None = None,
        from_block: int = 0,
    ) -> list[DeploymentEvent]:
        """``DeploymentRecorded`` logs in chain order, filtered in the node by the indexed hashes given."""
        topics = [_topic(model_hash, "model_hash"), _topic(artifact_hash, "artifact_hash"), _topic(run_id, "run_id")]
        return [
            DeploymentEvent(
                model_hash=bytes(args["modelHash"]),
                artifact_hash=bytes(args["artifactHash"]),
                run_id=bytes(args["runId"]),
                round=int(args["round"]),
                target=str(args["target"]),
                tx_hash=_hex(log["transactionHash"]),
                block_number=int(log["blockNumber"]),
                block_hash=_hex(log["blockHash"]),
            )
            for log, args in self._logs("DeploymentRecorded", topics, from_block)
        ]

    def release_events(self, *, artifact_hash: bytes | None = None, channel: str | None = None,
                       from_block: int = 0) -> list[ReleaseEvent]:
        """``ReleaseRecorded`` logs in chain order, filtered in the node by artifact and/or channel."""
        channel_topic = None if channel is None else _hex(Web3.keccak(text=channel))
        topics = [None, _topic(artifact_hash, "artifact_hash"), channel_topic]
        return [
            ReleaseEvent(
                sequence=int(args["sequence"]),
                action=int(args["action"]),
                channel=str(args["channel"]),
                artifact_hash=bytes(args["artifactHash"]),
                previous_artifact_hash=bytes(args["previousArtifactHash"]),
                canary_bp=int(args["canaryBasisPoints"]),
                signature=bytes(args["signature"]),
                tx_hash=_hex(log["transactionHash"]),
                block_number=int(log["blockNumber"]),
                block_hash=_hex(log["blockHash"]),
            )
            for log, args in self._logs("ReleaseRecorded", topics, from_block)
        ]

    # ----------------------------------------------------------------------------- plumbing

    @contextmanager
    def _node(self) -> Iterator[None]:
        with chain.node_errors(self._url):
            yield

    def _view(self, fn: str, *args: Any) -> Any:
        with self._node():
            return getattr(self._contract.functions, fn)(*args).call()

    def _logs(self, event: str, topics: list[str | None], from_block: int) -> list[tuple[Any, Any]]:
        """Raw ``eth_getLogs`` with explicit topics (so the node filters), then ABI-decoded here."""
        _uint("from_block", from_block, UINT64_MAX)
        handle = getattr(self._contract.events, event)()
        while topics and topics[-1] is None:
            topics = topics[:-1]
        query = {
            "address": self.address,
            "fromBlock": from_block,
            "toBlock": "latest",
            "topics": [_hex(HexBytes(handle.topic)), *topics],
        }
        with self._node():
            logs = self.w3.eth.get_logs(query)  # type: ignore[arg-type]
        return [(log, handle.process_log(log)["args"]) for log in logs]

    def _transact(self, fn: str, args: list[Any], gas: int) -> Receipt:
        """Check by ``eth_call`` (typed revert), send with an explicit gas limit, wait, check the status."""
        tx = {
            "from": self.sender,
            "to": self.address,
            "data": self._contract.encode_abi(fn, args=args),
            "gas": gas,
        }
        self._preflight(fn, tx, "latest")
        with self._node():
            tx_hash = self.w3.eth.send_transaction(tx)  # type: ignore[arg-type]
            receipt = chain.wait(self.w3, tx_hash)
        if receipt["status"] == 1:
            return _receipt(receipt)
        where = f"transaction {_hex(receipt['transactionHash'])} in block {receipt['blockNumber']}"
        if receipt["gasUsed"] >= gas:
            raise errors.LedgerTxFailed(f"{fn} ran out of gas ({gas}) in {where}")
        # It passed the check but reverted when mined: something changed in between. Replaying it on the
        # state after its block usually shows the reason (for example another writer recorded the round first).
        self._preflight(fn, tx, receipt["blockNumber"], suffix=f" (reverted when mined, {where})")
        raise errors.LedgerTxFailed(f"{fn} reverted in {where}")

    def _preflight(self, fn: str, tx: dict[str, Any], block: int | str, suffix: str = "") -> None:
        try:
            with self._node():
                self.w3.eth.call(tx, block)  # type: ignore[arg-type]
        except chain.REVERTS as exc:
            raise self._decode_revert(fn, exc, suffix) from exc
        except Web3RPCError as exc:
            raise errors.LedgerTxFailed(f"the node refused {fn}: {exc}{suffix}") from exc

    def _decode_revert(self, fn: str, exc: BaseException, suffix: str) -> errors.LedgerTxFailed:
        return chain.decode_revert(self._errors, fn, exc, suffix, self.sender, self.address)


def _receipt(receipt: Any) -> Receipt:
    return Receipt(
        tx_hash=_hex(receipt["transactionHash"]),
        block_number=int(receipt["blockNumber"]),
        block_hash=_hex(receipt["blockHash"]),
        gas_used=int(receipt["gasUsed"]),
    )


def _topic(value: bytes | None, name: str) -> str | None:
    return None if value is None else _hex(_hash32(name, value))


__all__ = [
    "ClientEvent",
    "DeploymentEvent",
    "LedgerContract",
    "Receipt",
    "RecordedKey",
    "RecordedRound",
    "ReleaseEvent",
    "RoundRecord",
]
