from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.core.model import make_model
from fedproof.core.protocol import BUDGET_EXHAUSTED, TRAINED
from fl_client.state import ClientState, state_file
from fl_client.training import train_round
from privacy.dp import PrivacySpend
from privacy.policy import PrivacyPolicy


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_state_persists_in_context_between_rounds() -> None:
    ctx = context()
    assert ClientState.load(ctx) == ClientState()
    ClientState.load(ctx).after_training(1, 100).save(ctx)
    ClientState.load(ctx).after_training(3, 50).save(ctx)
    assert ClientState.load(ctx) == ClientState(rounds_trained=2, examples_seen=150, last_round=3)


def test_a_new_run_keeps_the_spend_and_starts_its_own_counters(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    spend = PrivacySpend().after(1.0, 0.1, 40)
    ClientState(3, 300, 3, 1.2, spend, run_id="a").save(context(), path)
    again = ClientState.load(context(), path, run_id="a")  # a restart during run a: everything kept
    assert again.noise_multiplier == 1.2 and again.rounds_trained == 3 and again.spend == spend
    other = ClientState.load(context(), path, run_id="b")  # another run: the dataset's spend goes on
    assert other.spend == spend and other.noise_multiplier == 0.0 and other.rounds_trained == 0
    assert other.run_id == "b"


def test_the_state_file_is_per_dataset_never_per_run(tmp_path: Path) -> None:
    device = context(**{"state-dir": str(tmp_path / "dev")})
    assert state_file(device, "/runs", "3", "ab" * 32) == tmp_path / "dev" / f"3-{'ab' * 8}.json"
    assert state_file(context(), str(tmp_path), "3", "cd" * 32) == tmp_path / "client-state" / f"3-{'cd' * 8}.json"
    assert state_file(context(), str(tmp_path), "../x", "cd" * 32) is None


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_the_lifetime_budget_spans_runs_and_restarts_until_it_is_spent(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, size=(60, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=60)
    policy = PrivacyPolicy(max_epsilon=5.0, max_delta=1e-3)
    path = tmp_path / "client.json"
    outcomes = []
    for run_id in ("first", "second", "third", "fourth"):  # each "run" on a freshly started device
        config = RunConfig(run_id=run_id, noise_multiplier=1.0, target_epsilon=0.0, delta=1e-3, batch_size=20,
                           local_epochs=1, rounds=2, he=True)
        for rnd in (1, 2):
            state = ClientState.load(context(), path, run_id)
            outcome = train_round(make_model(seed=0), images, labels, config, state, rnd, seed=rnd, policy=policy)
            outcome.state.save(context(), path)
            outcomes.append(outcome)
    epsilons = [o.epsilon for o in outcomes if o.status == TRAINED]
    assert epsilons == sorted(epsilons) and len(epsilons) >= 3  # one growing total, across runs
    assert any(o.status == BUDGET_EXHAUSTED for o in outcomes)  # and it ends
    assert all(e <= 5.0 for e in epsilons)
    assert outcomes[-1].status == BUDGET_EXHAUSTED


def test_a_server_that_reshuffles_partitions_finds_the_same_budget(synthetic_dir: Path) -> None:
    """The budget file is named by the dataset's records, not by the partition the run's settings assign."""
    from fedproof.core.client_data import load_client_data

    a = load_client_data(RunConfig(data_dir=str(synthetic_dir), seed=1, alpha=0.5), 0, 2)
    b = load_client_data(RunConfig(data_dir=str(synthetic_dir), seed=99, alpha=5.0, partition="iid"), 0, 2)
    assert not np.array_equal(a.train_y, b.train_y)  # other records assigned...
    assert a.dataset == b.dataset and len(a.dataset) == 64  # ...the same dataset, so the same budget file
    assert state_file(context(), "/runs", "0", a.dataset) == state_file(context(), "/runs", "0", b.dataset)
