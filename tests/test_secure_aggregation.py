"""Encrypted aggregation, whatever the round: a client checks its update before it leaves the device, a ClientApp
decrypts nothing on request (threshold CKKS is the only scheme: no single party holds a key), and encrypted runs
match plaintext ones. The threshold round itself is in test_threshold_round.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedproof.core.config import RunConfig
from fedproof.core.protocol import CONFIG_KEY, EncryptedPayload, round_settings
from fl_client.secure_update import checked_delta, plain_update
from privacy.errors import PlaintextRangeError


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower refuses to create Messages outside a running app unless a task identity is set."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"w": Array(rng.normal(size=(30, 200)).astype(np.float32)),
                        "b": Array(rng.normal(size=(5000,)).astype(np.float32))})


def shifted(base: ArrayRecord, by: float) -> ArrayRecord:
    return ArrayRecord({k: Array(a + np.float32(by)) for k, a in zip(base.keys(), base.to_numpy_ndarrays())})


def test_a_client_refuses_to_send_a_diverged_or_oversized_update() -> None:
    base = global_model()
    assert np.allclose(checked_delta(shifted(base, 0.5), base, 4.0), 0.5)
    nan = ArrayRecord({k: Array(np.full(a.shape, np.nan, np.float32))
                       for k, a in zip(base.keys(), base.to_numpy_ndarrays())})
    far = shifted(base, 100)
    for trained, problem in ((nan, "NaN"), (far, "too large")):
        with pytest.raises(PlaintextRangeError, match=problem):  # before it is encrypted (threshold HE)
            checked_delta(trained, base, 4.0)
        with pytest.raises(PlaintextRangeError, match=problem):  # or sent in the clear
            plain_update(trained, base)


def test_a_client_app_answers_no_request_to_decrypt_a_sum() -> None:
    """The shared-key scheme's ``query.decrypt`` (a client decrypting the round's sum by itself) is gone: Flower
    finds no handler and raises, which reaches the server as an error reply, never as a decrypted sum."""
    from fl_client.client_app import app

    summed = EncryptedPayload((b"\x01" * 64,), 10, num_summed=3)  # what a committee member used to be sent
    content = summed.put(RecordDict({CONFIG_KEY: round_settings(RunConfig(run_id="r").client_record(), 1)}))
    msg = Message(content, dst_node_id=11, message_type="query.decrypt", group_id="1")
    context = Context(run_id=1, node_id=11, node_config={"client-id": "11"}, state=RecordDict(), run_config={})
    reply = None
    with pytest.raises(ValueError, match="No query function registered with name 'decrypt'"):
        reply = app(msg, context)
    assert reply is None  # nothing to send back, let alone a sum


@pytest.mark.slow
def test_he_runs_match_plaintext_and_the_server_never_holds_key_material(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServerApp runs in this process, the ClientApps in Ray workers: a key share drawn here fails the test."""
    import privacy.keygen
    from fedproof.launch.simulation import simulate
    from privacy.threshold import SecretShare

    def refuse(*args, **kwargs):
        raise AssertionError("secret key material was created in the server process")

    monkeypatch.setattr(SecretShare, "generate", refuse)
    monkeypatch.setattr(privacy.keygen, "hello", refuse)
    common = dict(clients=3, rounds=2, data_dir=str(synthetic_dir), run_dir=str(tmp_path), dp=False, ledger=False)
    threshold = simulate(RunConfig(**common, run_id="threshold", he=True), num_cpus=2)
    plain = simulate(RunConfig(**common, run_id="plain", he=False), num_cpus=2)
    for t, b in zip(threshold.rounds, plain.rounds):
        assert abs(t.accuracy - b.accuracy) <= 0.003
        assert t.rejected_updates == 0 and not t.failed
        assert t.upload_bytes_per_param is not None and t.upload_bytes_per_param <= 16
        assert b.upload_bytes_per_param == pytest.approx(4.0, rel=0.01)  # float32 plus .npy headers
    keys = Path(json.loads((tmp_path / "threshold" / "run.json").read_text())["config"]["key-set"])
    assert keys.parent == tmp_path / "threshold" and not list(keys.glob("*.ctx"))  # signing keys only
