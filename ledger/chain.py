"""Chain access: a connection to a JSON-RPC node (or an in-process test chain), node errors that say what to do,
receipts, and the decoding of a contract's custom-error reverts into typed errors. Nothing here knows the
lineage contract's functions (``ledger.contract`` is the typed API over this)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

from ledger import errors

RECEIPT_TIMEOUT = 30.0
POLL_LATENCY = 0.005  # anvil answers ~18 ms after a send; web3's default 0.1 s poll would cap us at ~8 tx/s

NODE_DOWN = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)
HINT = "run `fedproof devnet start`, or pass --ledger-url with the address of a running node"


def _tester_errors() -> tuple[type[BaseException], ...]:
    """eth-tester's revert exception (not a web3 exception), when eth-tester is installed (tests only)."""
    try:
        from eth_tester.exceptions import TransactionFailed
    except ImportError:  # production installs have no eth-tester
        return ()
    return (TransactionFailed,)


REVERTS: tuple[type[BaseException], ...] = (ContractLogicError, *_tester_errors())



def connect(url: str, timeout: float = 5.0) -> Web3:
    """A Web3 on an HTTP JSON-RPC node, checked to answer now (so a missing devnet fails here, clearly)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.LedgerValueError(f"ledger URL must start with http:// or https://, got {url!r}")
    # No retries: a local node that refuses a connection is down, and retrying only delays saying so.
    provider = HTTPProvider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
    w3 = Web3(provider)
    try:
        w3.eth.chain_id
    except NODE_DOWN as exc:
        raise errors.LedgerUnavailable(f"no Ethereum node answers at {url} ({reason(exc)}); {HINT}") from exc
    except (Web3RPCError, ValueError, requests.exceptions.RequestException) as exc:  # answers, but not JSON-RPC
        raise errors.LedgerUnavailable(
            f"{url} answers but not as an Ethereum JSON-RPC node ({exc}); {HINT}"
        ) from exc
    return w3

def in_memory() -> Web3:
    """An in-process eth-tester chain (py-evm), for tests: fast, but it cannot persist to disk."""
    from web3 import EthereumTesterProvider

    return Web3(EthereumTesterProvider())


def hex_of(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data carried by either backend's exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            pass
    # eth-tester: TransactionFailed("execution reverted: b'\xe5z...'"), the repr of the revert bytes.
    text = str(exc.args[0]) if exc.args else ""
    match = re.fullmatch(r"execution reverted: (b(['\"]).*\2)", text, flags=re.S)
    if match:
        try:
            value = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return None
        if isinstance(value, bytes):
            return value
    return None


@dataclass(frozen=True)
class ErrorSpec:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


def error_specs(abi: tuple[dict[str, Any], ...]) -> dict[bytes, ErrorSpec]:
    """4-byte selector -> custom error, from the ABI (so a renamed or added error cannot drift out of sync)."""
    specs = {}
    for entry in abi:
        if entry.get("type") != "error":
            continue
        types = tuple(str(arg["type"]) for arg in entry.get("inputs", []))
        selector = Web3.keccak(text=f"{entry['name']}({','.join(types)})")[:4]
        specs[bytes(selector)] = ErrorSpec(
            entry["name"], tuple(str(arg["name"]) for arg in entry.get("inputs", [])), types
        )
    return specs


ERROR_CLASSES: dict[str, type[errors.ContractRevert]] = {
    cls.error: cls
    for cls in (
        errors.NotOwner,
        errors.ClientAlreadyRegistered,
        errors.UnknownClientOnChain,
        errors.RoundOutOfOrder,
        errors.ParentMismatch,
        errors.UnknownModelOnChain,
        errors.ZeroHashRejected,
        errors.RunNotStarted,
        errors.RunAlreadyStarted,
        errors.BadKeyStatementOnChain,
    )
}


def revert_message(name: str, args: dict[str, Any], sender: str, address: str) -> str:
    h = {k: hex_of(v) if isinstance(v, bytes) else v for k, v in args.items()}
    if name == "NotOwner":
        return f"account {sender} is not the owner of the ledger contract {address}; only the deployer may write"
    if name == "AlreadyRegistered":
        return f"client {h['clientId']} is already registered on chain (a key is set once, even after revocation)"
    if name == "UnknownClient":
        return f"client {h['clientId']} was never registered on chain"
    if name == "RoundOutOfOrder":
        what = "already recorded" if args["got"] < args["expected"] else "out of order"
        return f"run {h['runId']}: round {args['got']} is {what}; the ledger expects round {args['expected']} next"
    if name == "ParentMismatch":
        return (
            f"parent model hash {h['got']} is not the model hash recorded for the previous round ({h['expected']})"
        )
    if name == "UnknownModel":
        return f"model {h['modelHash']} is not the model recorded for that run and round"
    if name == "ZeroHash":
        return "a hash of 32 zero bytes was given as a public key or model hash (zero means absent on chain)"
    if name == "BadKeyStatement":
        return "not a key statement the ledger takes (an empty statement, or signatures not 64 bytes each)"
    if name == "ReleaseOutOfOrder":
        return (f"release sequence {args['got']} is not the next one ({args['expected']}): a replayed or "
                "out-of-order statement")
    if name == "UnknownArtifact":
        return f"artifact {h['artifactHash']} was never recorded as a deployment: only deployed artifacts are released"
    if name == "BadRelease":
        return "not a release statement the ledger takes (action, channel, canary share or signature length)"
    return f"contract error {name}({', '.join(f'{k}={v}' for k, v in h.items())})"




def decode_revert(specs: dict[bytes, ErrorSpec], fn: str, exc: BaseException, suffix: str, sender: str,
                  address: str) -> errors.LedgerTxFailed:
    """The typed error a revert of ``fn`` stands for, decoded by its 4-byte selector."""
    data = revert_data(exc)
    spec = specs.get(data[:4]) if data and len(data) >= 4 else None
    if spec is None:
        return errors.LedgerTxFailed(f"{fn} reverted: {exc}{suffix}")
    try:
        values = abi_decode(list(spec.types), data[4:]) if spec.types else ()  # type: ignore[index]
    except DecodingError:
        return errors.LedgerTxFailed(f"{fn} reverted with malformed {spec.name} data{suffix}")
    arguments = dict(zip(spec.names, values))
    cls = ERROR_CLASSES.get(spec.name, errors.ContractRevert)
    return cls(revert_message(spec.name, arguments, sender, address) + suffix, arguments)


def endpoint(w3: Web3) -> str:
    return str(getattr(w3.provider, "endpoint_uri", None) or type(w3.provider).__name__)


def first_account(w3: Web3, url: str) -> str:
    """The node's first unlocked account: anvil's (or eth-tester's) dev account 0 deploys and writes."""
    accounts = w3.eth.accounts
    if not accounts:
        raise errors.LedgerUnavailable(
            f"the node at {url} has no unlocked account to send ledger transactions from; use the local devnet "
            "(`fedproof devnet start`)"
        )
    return str(accounts[0])


def reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    return type(exc).__name__


@contextmanager
def node_errors(url: str) -> Iterator[None]:
    try:
        yield
    except NODE_DOWN as exc:
        raise errors.LedgerUnavailable(
            f"the Ethereum node at {url} does not answer ({reason(exc)}); {HINT}"
        ) from exc


def wait(w3: Web3, tx_hash: bytes) -> Any:
    try:
        return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=POLL_LATENCY)
    except TimeExhausted as exc:
        raise errors.LedgerTxFailed(
            f"transaction {hex_of(tx_hash)} was not mined within {RECEIPT_TIMEOUT:.0f} s (is the node mining?)"
        ) from exc


