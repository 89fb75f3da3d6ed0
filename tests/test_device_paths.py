"""A device reads no path the server names (the second review: ``key-set``, ``data-dir`` and the run directory
came from the run config): its keys, allow-list, data and privacy history come from its node config."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedproof.core.config import ClientSettings, RunConfig
from fedproof.base.errors import ConfigError
from fl_client.client_app import _settings
from fl_client.signing import allow_list, signing_key
from fl_client.state import state_file

@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


EVIL = RunConfig(key_set="/srv/attacker/keys", data_dir="/srv/attacker/data", run_dir="/srv/attacker/runs")


def message(config: RunConfig, **extra) -> Message:
    """What a server (here: one that names paths, as a simulation's may) sends a client with every message."""
    sent = ClientSettings.of(config, shared_machine=True).to_record()
    return Message(RecordDict({"config": ConfigRecord({**sent, **extra, "server-round": 1})}), dst_node_id=1,
                   message_type="train")


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_device_ignores_the_paths_in_the_run_settings() -> None:
    device = context(**{"client-id": "c1", "partition-id": 0, "num-partitions": 2, "data-dir": "/home/me/data"})
    config, _ = _settings(message(EVIL), device)
    assert config.key_set == "" and config.data_dir == "/home/me/data"
    bare = context(**{"client-id": "c1"})
    assert _settings(message(EVIL), bare)[0].data_dir == ""  # its default location, not the server's
    with pytest.raises(ConfigError, match="signing-key"):
        signing_key(_settings(message(EVIL), bare)[0], bare)
    with pytest.raises(ConfigError, match="allow-list"):
        allow_list(_settings(message(EVIL), bare)[0], bare)
    saved = state_file(bare, EVIL.run_dir, "c1", "fashion-mnist")
    assert saved is not None and not str(saved).startswith("/srv/attacker")
    assert str(saved).startswith(str(Path("~/.local/share/fedproof").expanduser()))


def test_a_simulated_client_takes_the_operators_run_settings() -> None:
    simulated = context(**{"partition-id": 0, "num-partitions": 2})
    config, _ = _settings(message(EVIL), simulated)
    assert config.key_set == EVIL.key_set and config.data_dir == EVIL.data_dir
    assert str(state_file(simulated, EVIL.run_dir, "0", "fashion-mnist")).startswith("/srv/attacker/runs")


def test_a_device_without_a_ledger_pin_signs_nothing_for_a_ledger_run(tmp_path) -> None:
    """The second review: a device without trust.json signed for whatever chain, genesis and contract the server
    named. Now it refuses a ledger run, and signs a run without a ledger."""
    from fedproof.core.keys import init_key_set
    from fl_client.signing import domain, sign_update
    from pins import device_pin

    keys = init_key_set(tmp_path / "keys", ["c1"])
    ledger_run = RunConfig(run_id="r", chain_id=31337, ledger_contract="0x" + "ab" * 20)
    node = {"client-id": "c1", "signing-key": str(keys.signing_key("c1")), "allow-list": str(keys.allowlist)}
    with pytest.raises(ConfigError, match="pins no ledger"):
        domain(ledger_run, context(**node))
    with pytest.raises(ConfigError, match="pins no ledger"):
        sign_update(RecordDict(), ledger_run, context(**node), 1, 1, None, bytes(32))
    assert domain(ledger_run, context(**node, **{"ledger-trust": device_pin(ledger_run)})).chain_id == 31337
    assert domain(RunConfig(run_id="r"), context(**node)).chain_id == 0  # no ledger: nothing to pin


def test_clients_are_sent_their_settings_only() -> None:
    """ClientSettings on the wire: to a device no path and none of the server's own settings; a record with a key
    outside the clients' vocabulary is refused."""
    config = RunConfig(key_set="/srv/kit", run_dir="/srv/runs", data_dir="/srv/data", ledger_operator="/srv/op",
                       ledger_password_file="/srv/op/pw", metrics_port=9400)
    to_device = ClientSettings.of(config, shared_machine=False).to_record()
    assert set(to_device) == set(ClientSettings.KEYS)
    assert not any(isinstance(v, str) and v.startswith("/srv") for v in to_device.values())
    assert ClientSettings.from_record(to_device).run_config().run_id == config.run_id
    simulated = ClientSettings.of(config, shared_machine=True).to_record()
    assert simulated["key-set"] == "/srv/kit" and "ledger-operator" not in simulated
    with pytest.raises(ConfigError, match="does not take: ledger-password-file"):
        _settings(message(config, **{"ledger-password-file": "/etc/shadow"}), context(**{"client-id": "c1"}))
