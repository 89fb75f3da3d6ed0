"""Which port a devnet directory uses, decided without starting anything (the real anvil: test_devnet.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.devnet import DEFAULT_PORT, Devnet
from ledger import errors
from ledger.defaults import DEFAULT_DATA_DIR


def test_the_default_directory_keeps_8545(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Devnet(DEFAULT_DATA_DIR).port == DEFAULT_PORT == 8545
    assert Devnet(DEFAULT_DATA_DIR, port=9000).port == 9000  # unless told otherwise


def test_another_directory_has_no_port_until_it_starts_or_one_is_recorded(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "mine")
    assert net.port == 0 and net.status().running is False
    with pytest.raises(errors.DevnetError, match="no devnet has run in .*fedproof devnet start --data-dir"):
        net.url
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "anvil.port").write_text("18545\n")
    assert Devnet(tmp_path / "mine").url == "http://127.0.0.1:18545"


@pytest.mark.parametrize("junk", ["", "eighty", "0", "70000", "-5"])
def test_a_damaged_port_record_is_a_typed_error(tmp_path: Path, junk: str) -> None:
    (tmp_path / "anvil.port").write_text(junk)
    with pytest.raises(errors.DevnetError, match="does not hold a port number"):
        Devnet(tmp_path)
    assert Devnet(tmp_path, port=18546).port == 18546  # a port given explicitly does not read the record
