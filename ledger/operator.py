"""The operator's keys: the ledger account that writes the lineage (an encrypted Ethereum keystore, never an
unlocked node account) and the Ed25519 key that signs deployment manifests (encrypted PKCS#8 PEM).

Layout of an operator directory (files 0600)::

    ledger-key.json     web3 / eth-account keystore (scrypt + AES-128-CTR), its password from a file or a prompt
    deploy-key.pem      Ed25519 deployment-signing key, encrypted with the same password
    deploy-key.pub      its public key (hex): what every device kit pins

A simulation on the local devnet may still write with anvil's dev account 0 (its key is public: that chain is a
playground) and says so; ``fedproof server start`` and ``fedproof deploy --operator DIR`` use these keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from web3 import Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder

from fedproof.base.files import write_atomically
from ledger.errors import KeyFileError
from ledger.manifest import DeploymentKey

LEDGER_KEY, DEPLOY_KEY, DEPLOY_PUB = "ledger-key.json", "deploy-key.pem", "deploy-key.pub"
_MAX_KEYSTORE = 16 << 10


@dataclass(frozen=True)
class OperatorKeys:
    directory: Path

    @property
    def ledger_key(self) -> Path:
        return self.directory / LEDGER_KEY

    @property
    def deploy_key(self) -> Path:
        return self.directory / DEPLOY_KEY

    @property
    def deploy_public(self) -> bytes:
        path = self.directory / DEPLOY_PUB
        if not path.is_file():
            raise KeyFileError(f"no deployment public key at {path} (create the operator keys with "
                               "`fedproof provision`, which writes them into the server kit)")
        return bytes.fromhex(path.read_text().strip())

    def exists(self) -> bool:
        return self.ledger_key.is_file() and self.deploy_key.is_file()

    @classmethod
    def create(cls, directory: Path, password: bytes) -> OperatorKeys:
        """New keys (refuses to overwrite existing ones: registered keys must not silently change)."""
        keys = cls(Path(directory))
        if keys.ledger_key.exists() or keys.deploy_key.exists():
            raise KeyFileError(f"operator keys already exist in {directory}; remove them first to replace them")
        if len(password) < 8:
            raise KeyFileError("the operator password must be at least 8 characters")
        account = Account.create()
        write_atomically(keys.ledger_key, json.dumps(Account.encrypt(account.key, password.decode())).encode(),
                         private=True)
        deploy = DeploymentKey.generate()
        write_atomically(keys.deploy_key, deploy.to_pem(password), private=True)
        write_atomically(keys.directory / DEPLOY_PUB, (deploy.public_key.hex() + "\n").encode(), private=True)
        return keys

    def ledger_account(self, password: bytes):
        """The ledger account (eth-account LocalAccount), decrypted."""
        path = self.ledger_key
        if not path.is_file() or path.stat().st_size > _MAX_KEYSTORE:
            raise KeyFileError(f"no operator ledger keystore at {path}")
        try:
            return Account.from_key(Account.decrypt(json.loads(path.read_text()), password.decode()))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: cannot decrypt the keystore (wrong password, or not a keystore)") from exc

    def deployment_key(self, password: bytes) -> DeploymentKey:
        return DeploymentKey.load(self.deploy_key, password)

    def address(self) -> str:
        """The ledger account's address, read from the keystore without decrypting it."""
        try:
            return Web3.to_checksum_address(json.loads(self.ledger_key.read_text())["address"])
        except (OSError, ValueError, KeyError) as exc:
            raise KeyFileError(f"{self.ledger_key}: not a keystore") from exc


def use_account(w3: Web3, account) -> str:
    """Sign every transaction ``w3`` sends from ``account`` locally (the node holds no key); return its address."""
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
    return str(account.address)


def read_password(path: Path | None, prompt: str = "operator key password") -> bytes:
    """The password from a file (its first line), else a prompt on the terminal."""
    if path is not None:
        text = Path(path).read_text().splitlines()
        if not text or not text[0]:
            raise KeyFileError(f"{path}: empty password file")
        return text[0].encode()
    import getpass

    return getpass.getpass(f"{prompt}: ").encode()
