"""A device's privacy policy: the server's settings may only tighten it; anything weaker is refused, untrained."""

from __future__ import annotations

import json

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.core.model import make_model
from fedproof.core.protocol import POLICY_REFUSED, TRAINED
from fl_client.policy import client_policy, run_policy
from fl_client.state import ClientState
from fl_client.training import train_round
from privacy.policy import PolicyError, PolicyRefusal, PrivacyPolicy

STRICT = PrivacyPolicy()  # DP and HE required, lifetime epsilon 3, delta <= 1e-5, clip in [0.01, 1], no metrics
ASKED = dict(dp=True, he=True, target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=0.0)


def admit(policy: PrivacyPolicy, **changes):
    config = RunConfig(**{**ASKED, **changes})
    return policy.admit(dp=config.dp, he=config.he, settings=config.dp_settings())


@pytest.mark.parametrize("weaker, code", [
    ({"dp": False}, "dp-required"),
    ({"he": False}, "he-required"),
    ({"target_epsilon": 1e6}, "epsilon-above-policy"),
    ({"target_epsilon": 0.0, "noise_multiplier": 0.3}, "noise-below-policy"),
    ({"max_grad_norm": 5.0}, "clip-outside-policy"),
    ({"delta": 1e-3}, "delta-above-policy"),
])
def test_a_weaker_request_is_refused_with_its_reason(weaker: dict, code: str) -> None:
    policy = PrivacyPolicy(min_noise_multiplier=0.5)
    with pytest.raises(PolicyRefusal) as refused:
        admit(policy, **weaker)
    assert refused.value.code == code and str(refused.value).startswith(code)


def test_a_stricter_request_is_admitted_and_the_policy_caps_what_is_left_open() -> None:
    assert admit(STRICT, target_epsilon=1.0, max_grad_norm=0.1, delta=1e-6).target_epsilon == 1.0  # tighter: kept
    assert admit(STRICT, target_epsilon=0.0, noise_multiplier=2.0).target_epsilon == 3.0  # no run cap: the policy's
    assert PrivacyPolicy(min_noise_multiplier=0.8).noise_floor(0.5) == 0.8  # calibrated too low: raised
    assert admit(PrivacyPolicy(dp_required=False, he_required=False), dp=False, he=False) is None


def test_a_refused_round_trains_nothing_and_spends_nothing() -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, size=(60, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=60)
    model, state = make_model(seed=0), ClientState()
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_round(model, images, labels, RunConfig(dp=False, he=True), state, 1, seed=1, policy=STRICT)
    assert outcome.status == POLICY_REFUSED and outcome.reason.startswith("dp-required")
    assert outcome.num_examples == 0 and outcome.state == state
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    allowed = train_round(model, images, labels, RunConfig(dp=False, he=True, batch_size=20, local_epochs=1), state,
                          1, seed=1, policy=PrivacyPolicy(dp_required=False))
    assert allowed.status == TRAINED


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_device_reads_its_own_policy_and_never_one_the_server_names(tmp_path: Path) -> None:
    own = tmp_path / "policy.json"
    own.write_text(PrivacyPolicy(max_epsilon=1.5).to_json())
    permissive = tmp_path / "server-chosen"
    permissive.mkdir()
    (permissive / "policy.json").write_text(PrivacyPolicy(dp_required=False, he_required=False).to_json())
    sent = RunConfig(dp=False, he=False, key_set=str(permissive))  # what a hostile server sends
    assert client_policy(sent, context(**{"client-id": "3", "privacy-policy": str(own)})).max_epsilon == 1.5
    assert client_policy(sent, context(**{"client-id": "3"})) == STRICT  # a device without a file: the strictest
    # a simulated client (no identity of its own in its node config) holds the run's own settings
    assert client_policy(sent, context(**{"partition-id": 0})) == run_policy(sent)
    assert run_policy(RunConfig(target_epsilon=0.0, noise_multiplier=1.0)).max_epsilon == math.inf


@pytest.mark.parametrize("text", ["", "{", "[]", '{"version": 2}', '{"version": 1, "max_epsilon": "3"}',
                                  '{"version": 1, "dp_required": 1}', '{"version": 1, "surprise": true}',
                                  '{"version": 1, "max_epsilon": -1}', '{"version": 1, "min_clip": 2, "max_clip": 1}',
                                  '{"version": 1, "shared_key_allowed": 1}'])
def test_a_bad_policy_file_is_a_typed_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(text)
    with pytest.raises(PolicyError):
        PrivacyPolicy.load(path)


def test_a_policy_file_round_trips(tmp_path: Path) -> None:
    policy = PrivacyPolicy(max_epsilon=2.0, max_delta=1e-6, min_noise_multiplier=0.7, min_clip=0.05, max_clip=0.5,
                           he_required=False, release_metrics=True)
    path = tmp_path / "p.json"
    path.write_text(policy.to_json())
    assert PrivacyPolicy.load(path) == policy
    legacy = json.loads(policy.to_json()) | {"shared_key_allowed": False}  # a kit from before the scheme went
    path.write_text(json.dumps(legacy))
    assert PrivacyPolicy.load(path) == policy
    with pytest.raises(PolicyError, match="no privacy policy"):
        PrivacyPolicy.load(tmp_path / "missing.json")
