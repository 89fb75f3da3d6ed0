"""What a run's start discovers, kept apart from what the user asked for.

``RunConfig`` is the user's intent and is never rewritten here. Start-up finds out the rest, once, into one
:class:`StartUp` value that the round loop, the clients' settings, the key ceremony and the lineage read:

- the key set and its allow-list. With no ``key-set`` configured (simulation), one is made in place beside the
  ledger the clients are registered on (so they keep their identities across runs); a deployment names an
  operator-made key set that holds only the server's files;
- the ledger: the lineage contract (found on the devnet, or the one named), with the allow-listed clients
  registered, and so the domain every statement of the run binds (chain, genesis, contract, run id);
- under threshold HE, the weight scale W that the key statement will carry.

``run.json`` records these beside the settings, so that later commands (resume, deploy, audit, ledger flush) find
the same keys and chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedproof.base.errors import ConfigError
from fedproof.core.client_data import load_client_data
from fedproof.core.config import RunConfig, Scalar
from fedproof.core.keys import KeySet, has_keys_for, init_key_set
from ledger.contract import LedgerContract
from ledger.defaults import DEFAULT_DATA_DIR
from ledger.errors import LedgerError
from ledger.signing import client_id_hash
from ledger.devnet import Devnet, ensure_contract
from ledger.verification import AllowList, Domain

UNREGISTERED_WEIGHT_SCALE = 2**20
"""The weight scale when not every client has a registered weight: sums of up to a million examples."""


@dataclass(frozen=True)
class StartUp:
    allow: AllowList
    key_set: Path
    contract: LedgerContract | None
    """None without a ledger."""
    domain: Domain
    """Where this run's statements belong: what every signature of it binds."""
    weight_scale: int
    """W for threshold HE (0 without it)."""

    def resolved(self) -> dict[str, Scalar]:
        """The settings start-up resolved, by their keys: what ``run.json`` records beside the user's, and what
        clients on this machine are told (the chain they sign for; the key set's path)."""
        d = self.domain
        return {"key-set": str(self.key_set), "chain-id": d.chain_id,
                "ledger-contract": "0x" + d.contract.hex() if any(d.contract) else "",
                "chain-genesis": "0x" + d.genesis.hex() if any(d.genesis) else "",
                "he-weight-scale": self.weight_scale}


def start_up(config: RunConfig, run_path: Path) -> StartUp:
    """Load (or, for a simulation, make) the key set, open the ledger and register the clients on it, and size W."""
    allow, key_set = load_credentials(config, run_path)
    contract = open_ledger(config, allow)
    domain = (Domain(contract.chain_id, bytes.fromhex(contract.address[2:]), config.run_id, contract.genesis)
              if contract is not None else config.domain())
    if not config.he:
        scale = 0
    elif config.dp and config.privacy == "user":  # every update weighs one: W is the most devices a sum can hold
        scale = config.he_weight_scale or len(allow.keys)
    else:
        scale = config.he_weight_scale or weight_scale(allow)
    return StartUp(allow, key_set, contract, domain, scale)


def load_credentials(config: RunConfig, run_path: Path) -> tuple[AllowList, Path]:
    """The allow-list of the clients' signing keys, and the key set's directory."""
    if config.key_set:
        directory = Path(config.key_set).expanduser()
        return AllowList.load(KeySet(directory).allowlist), directory
    directory = simulation_keys(config, run_path)
    ids = [str(i) for i in range(config.clients)]
    if not has_keys_for(KeySet(directory), ids):
        try:
            init_key_set(directory, ids)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not create the run's key set in {directory}: {exc}") from exc
    allow = AllowList.load(KeySet(directory).allowlist)
    # Simulated data holders are the operator's: it registers each one's partition size as its weight.
    sizes = {i: len(load_client_data(config, int(i), config.clients).train_y) for i in ids}
    return allow.with_weights(sizes), directory


def simulation_keys(config: RunConfig, run_path: Path) -> Path:
    """Where simulated clients keep their keys: beside the ledger they are registered on (so they keep their
    identities across runs), or in the run directory without a ledger."""
    if config.ledger:
        return Path(config.devnet_dir or DEFAULT_DATA_DIR).expanduser() / "simulation-keys"
    return run_path / "keys"


def open_ledger(config: RunConfig, allow: AllowList) -> LedgerContract | None:
    """Connect to the ledger (starting the local devnet if no URL is given), find or deploy the contract, and
    register the allow-listed clients."""
    if not config.ledger:
        return None
    data_dir = Path(config.devnet_dir or DEFAULT_DATA_DIR).expanduser()
    url = config.ledger_url or Devnet(data_dir, port=config.devnet_port or None).start().url
    w3 = LedgerContract.connect(url)
    sender = None
    if config.ledger_operator:  # the operator's own key, decrypted here; the node holds none
        from ledger.operator import OperatorKeys, read_password, use_account

        keys = OperatorKeys(Path(config.ledger_operator))
        password = read_password(Path(config.ledger_password_file) if config.ledger_password_file else None)
        sender = use_account(w3, keys.ledger_account(password))
    contract = (LedgerContract.at(w3, config.ledger_contract, sender=sender) if config.ledger_contract
                else ensure_contract(w3, data_dir, sender=sender))
    register_clients(contract, allow)
    return contract


def register_clients(contract: LedgerContract, allow: AllowList) -> None:
    for client_id, key in sorted(allow.keys.items()):
        on_chain = contract.client_key(client_id_hash(client_id))
        if on_chain is None:
            contract.register_client(client_id_hash(client_id), key)
        elif on_chain != key:
            raise LedgerError(f"client {client_id!r} is registered on chain with another key; use a new client id "
                              "or the key set it was registered with")
        if client_id in allow.revoked and contract.is_active_client(client_id_hash(client_id)):
            contract.revoke_client(client_id_hash(client_id))


def weight_scale(allow: AllowList) -> int:
    """W for threshold HE: the registered weights' total (a simulation registers its clients' partition sizes;
    a round whose weights exceed it is refused), else :data:`UNREGISTERED_WEIGHT_SCALE`. The decrypted mean's
    error grows with W / sum(n_k): register weights (``provision --declared-examples``) for full precision."""
    weights = {c: w for c, w in allow.weights.items() if c in allow.keys}
    return sum(weights.values()) if weights else UNREGISTERED_WEIGHT_SCALE
