"""A device's ledger pin (its kit's trust.json) for a test's run settings: devices sign nothing for a ledger run
without one (fl_client.signing.domain)."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from ledger.trust import LedgerTrust


@lru_cache(maxsize=16)
def _pin(chain_id: int, genesis: bytes, contract: bytes) -> str:
    path = Path(tempfile.mkdtemp(prefix="fedproof-pin-")) / "trust.json"
    path.write_text(LedgerTrust(chain_id, genesis, contract).to_json())
    return str(path)


def device_pin(config) -> str:
    """The path of a trust.json pinning ``config``'s chain, genesis and contract."""
    where = config.domain()
    return _pin(where.chain_id, where.genesis, where.contract)
