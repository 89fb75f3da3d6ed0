"""The default training path (ScatterNet features, GroupNorm + linear head, DP-SGD with large batches and a small
clip, many one-epoch rounds): it learns under DP, and its schedule keeps every client within its lifetime budget."""

from __future__ import annotations

import numpy as np
import pytest

from fedproof.core.config import RunConfig
from fedproof.core.model import make_model
from fedproof.core.features import evaluate
from fl_client.state import ClientState
from fl_client.training import train_round
from privacy.dp import DPSettings, PrivacySpend, RoundPlan, calibrate_noise, check_budget
from privacy.errors import BudgetExhausted
from tests.conftest import make_images


def small_task(n_train: int = 1000, n_test: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    train_y, test_y = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    return make_images(train_y, rng), train_y, make_images(test_y, rng), test_y


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_the_default_model_learns_under_dp_on_small_data() -> None:
    """Three DP rounds at epsilon 3 on 1,000 generated images: well above chance (10%)."""
    train_x, train_y, test_x, test_y = small_task()
    config = RunConfig(rounds=3, batch_size=256, lr=2.0)  # the defaults' clip 0.1, ghost clipping, ScatterNet
    model, state = make_model(config.model, seed=0), ClientState()
    for rnd in range(1, config.rounds + 1):
        outcome = train_round(model, train_x, train_y, config, state, rnd, seed=rnd)
        assert outcome.status == "trained"
        state = outcome.state
    assert outcome.epsilon <= config.target_epsilon
    _, accuracy = evaluate(model, test_x, test_y)
    assert accuracy >= 0.6


@pytest.mark.parametrize("n", [1_800, 4_860, 9_700])  # the demo's partitions span ~1,800 to ~9,700 images
def test_the_default_schedule_keeps_every_client_within_its_lifetime_budget(n: int) -> None:
    """Noise calibrated once for all rounds: after the last round epsilon is at most the target, and a further
    round is refused before it trains."""
    config = RunConfig()
    settings = config.dp_settings()
    assert isinstance(settings, DPSettings)
    plan = RoundPlan.for_data(n, config.training_batch(), config.training_epochs())
    noise = calibrate_noise(settings, plan, config.rounds)
    spend = PrivacySpend()
    for _ in range(config.rounds):  # what each round's train_round records (tests/test_dp.py: as Opacus records it)
        spend = spend.after(noise, plan.sample_rate, plan.steps)
    epsilon = spend.epsilon(settings.delta, settings.accountant)
    assert 0.95 * config.target_epsilon <= epsilon <= config.target_epsilon  # spent, and not a bit more
    with pytest.raises(BudgetExhausted):
        check_budget(spend, noise, plan, settings)


def test_features_are_kept_by_content_and_a_damaged_cache_file_is_recomputed(tmp_path, monkeypatch) -> None:
    from fedproof.core import features as task

    monkeypatch.setenv("FEDPROOF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(task, "_FEATURES", type(task._FEATURES)())
    images = small_task(n_train=40, n_test=1)[0]
    model = make_model()
    first = task.features(model, images).clone()
    (cached,) = (tmp_path / "features").glob("*.npy")
    task._FEATURES.clear()
    assert np.array_equal(task.features(model, images).numpy(), first.numpy())  # from disk
    task._FEATURES.clear()
    np.save(cached, np.zeros((3, 2), np.float32))  # wrong shape: not trusted, recomputed and rewritten
    assert np.array_equal(task.features(model, images).numpy(), first.numpy())
    assert np.load(cached).shape == tuple(first.shape)
    other = images.copy()
    other[0, 0, 0] ^= 1
    assert not np.array_equal(task.features(model, other).numpy(), first.numpy())  # keyed by content
