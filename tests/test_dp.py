"""Differential privacy: accounting matches Opacus, budgets are enforced, noise and clipping really happen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedproof.core.config import RunConfig
from fedproof.base.errors import ConfigError
from fedproof.core.model import make_model
from fedproof.core.protocol import BUDGET_EXHAUSTED, TRAINED
from fl_client.state import ClientState
from fl_client.training import run_epochs, train_round
from privacy.dp import DPSettings, PrivacySpend, RoundPlan, calibrate_noise, check_budget, make_private, validate_model
from privacy.errors import BudgetExhausted, DPConfigError


def tiny_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g) * 5, torch.randint(0, 3, (n,), generator=g)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def train_private(model: nn.Module, seed: int, settings: DPSettings, noise: float = 1.0, epochs: int = 1,
                  spent: PrivacySpend = PrivacySpend()) -> PrivacySpend:
    x, y = tiny_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with make_private(model, optimizer, loader, settings, noise) as private:
        run_epochs(model, private.optimizer, private.criterion, private.loader, epochs)
        return private.spend(spent)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_after_k_rounds_equals_opacus(accountant: str) -> None:
    settings = DPSettings(delta=1e-3, accountant=accountant, grad_sample_mode="hooks")
    model, spent, epsilons = tiny_model(), PrivacySpend(), []
    for k in range(3):
        spent = train_private(model, seed=k, settings=settings, noise=1.1, spent=spent)
        epsilons.append(spent.epsilon(settings.delta, accountant))
    reference = create_accountant(accountant)
    for _ in range(3 * 4):  # 3 rounds x 4 Poisson steps (64 samples / batch 16)
        reference.step(noise_multiplier=1.1, sample_rate=1 / 4)
    assert spent.steps == 12
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta=settings.delta), abs=1e-6)
    assert epsilons == sorted(epsilons) and epsilons[0] > 0  # monotone over rounds


def test_history_survives_flower_state() -> None:
    from flwr.app import Context, RecordDict

    spend = PrivacySpend().after(1.0, 0.1, 30).after(1.0, 0.1, 30).after(0.8, 0.2, 5)
    assert spend.history == ((1.0, 0.1, 60), (0.8, 0.2, 5))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    ClientState(noise_multiplier=1.0, spend=spend).save(context)
    assert ClientState.load(context).spend == spend


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_noise_and_sampling_are_fresh_every_time_and_only_the_entropy_can_repeat_them(monkeypatch) -> None:
    import privacy.secure_random as secure_random

    settings = DPSettings(grad_sample_mode="hooks")
    a, b = tiny_model(), tiny_model()
    train_private(a, seed=1, settings=settings)
    train_private(b, seed=1, settings=settings)  # the same settings, data, seed and initial model
    assert not torch.allclose(weights(a), weights(b))
    monkeypatch.setattr(secure_random, "_entropy", lambda n: bytes(range(n)))  # the test-only path
    c, d = tiny_model(), tiny_model()
    train_private(c, seed=1, settings=settings)
    train_private(d, seed=2, settings=settings)  # the seed plays no part in DP's randomness
    assert torch.equal(weights(c), weights(d))


def test_the_noise_cannot_be_regenerated_from_anything_the_server_knows() -> None:
    """Zero inputs make every per-sample gradient of a bias-free layer zero, so what the optimizer adds is the
    noise alone. A server knows the run's seed, the round and the partition: every generator it can seed from
    them (the old formula, the config seed) misses."""
    settings = DPSettings(max_grad_norm=1.0, grad_sample_mode="hooks")
    model = nn.Linear(6, 256, bias=False)  # 1,536 noise draws: the checks below sit at ~6 sigma, never flaky
    loader = DataLoader(TensorDataset(torch.zeros(32, 6), torch.zeros(32, dtype=torch.long)), batch_size=32)
    with make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, settings, 1.0) as private:
        xb, yb = next(iter(private.loader))
        private.criterion(model(xb), yb).backward() if len(yb) else None
        private.optimizer.pre_step()
        noise = model.weight.grad.detach().flatten() * private.optimizer.expected_batch_size
    assert noise.std() == pytest.approx(1.0, rel=0.15) and abs(float(noise.mean())) < 0.15  # N(0, (1.0 * 1.0)^2)
    seed, rounds, partitions = 42, range(1, 6), range(10)
    candidates = [seed * 1_000_003 + r * 1_009 + p + 1 for r in rounds for p in partitions] + [seed, seed + 1, 0]
    for candidate in candidates:
        guess = torch.normal(0.0, 1.0, size=(256, 6), generator=torch.Generator().manual_seed(candidate)).flatten()
        assert abs(float(torch.corrcoef(torch.stack([noise, guess]))[0, 1])) < 0.3, candidate


def test_clipping_bounds_per_sample_gradients() -> None:
    clip = 0.5
    settings = DPSettings(max_grad_norm=clip, grad_sample_mode="hooks")
    model = tiny_model()
    x, y = tiny_data(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with make_private(model, optimizer, loader, settings, noise_multiplier=1.0) as private:
        xb, yb = next(iter(private.loader))
        private.criterion(model(xb), yb).backward()
        params = [p for p in model.parameters() if p.requires_grad]
        per_sample = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
        norms = per_sample.norm(dim=1)
        assert norms.max() > 4 * clip  # the unclipped gradients are well above the bound
        private.optimizer.clip_and_accumulate()
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        expected = (per_sample * factors[:, None]).sum(0)
        summed = torch.cat([p.summed_grad.flatten() for p in params])
        torch.testing.assert_close(summed, expected, rtol=1e-4, atol=1e-5)
        assert (per_sample * factors[:, None]).norm(dim=1).max() <= clip + 1e-5


@pytest.mark.slow  # two seconds of calibration: `make test` and CI run it
def test_calibration_lands_at_or_just_under_target() -> None:
    settings = DPSettings(target_epsilon=3.0, delta=1e-5)
    plan = RoundPlan.for_data(n_samples=5400, batch_size=64, epochs=2)
    noise = calibrate_noise(settings, plan, rounds=5)
    spent = PrivacySpend()
    for _ in range(5):
        check_budget(spent, noise, plan, settings)  # every planned round fits
        spent = spent.after(noise, plan.sample_rate, plan.steps)
    assert 2.95 <= spent.epsilon(settings.delta) <= 3.0
    with pytest.raises(BudgetExhausted, match="exhausted"):
        check_budget(spent, noise, plan, settings)  # a sixth would not


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_client_declines_when_budget_would_be_exceeded() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(200, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=200)
    config = RunConfig(dp=True, noise_multiplier=1.0, target_epsilon=5.0, delta=1e-3, batch_size=60,
                       local_epochs=1, grad_sample_mode="hooks")
    state, outcomes = ClientState(), []
    for rnd in range(1, 30):
        model = make_model(seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        outcome = train_round(model, images, labels, config, state, rnd, seed=rnd)
        outcomes.append(outcome)
        if outcome.status == BUDGET_EXHAUSTED:
            assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # never trained
            assert outcome.num_examples == 0 and outcome.state == state
            break
        state = outcome.state
    assert outcomes[-1].status == BUDGET_EXHAUSTED and len(outcomes) > 1
    assert all(o.status == TRAINED for o in outcomes[:-1])
    assert all(o.epsilon is not None and o.epsilon <= 5.0 for o in outcomes)


@pytest.mark.parametrize("dp", [True, False])
def test_dp_rounds_differ_between_runs_and_plain_rounds_repeat(dp: bool) -> None:
    """Same data, settings, seed and initial model: DP's noise and sampling make every run its own; without DP,
    determinism is kept (it protects nobody there, and it keeps tests and benchmarks repeatable)."""
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 255, size=(120, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=120)
    config = RunConfig(dp=dp, noise_multiplier=1.0, target_epsilon=0.0, delta=1e-3, batch_size=20, local_epochs=1,
                       grad_sample_mode="hooks")
    trained = []
    for _ in range(2):
        model = make_model(seed=0)
        assert train_round(model, images, labels, config, ClientState(), 1, seed=7).status == TRAINED
        trained.append(weights(model))
    assert torch.equal(trained[0], trained[1]) is not dp


@pytest.mark.parametrize(
    "change", [{"target_epsilon": -1.0}, {"delta": 0.0}, {"delta": 1.5}, {"max_grad_norm": 0.0},
               {"target_epsilon": 0.0, "noise_multiplier": 0.0}, {"grad_sample_mode": "ew"}],
)
def test_bad_dp_settings_are_refused(change: dict) -> None:
    with pytest.raises(ConfigError):
        RunConfig(**change)


def test_delta_must_be_below_one_over_n() -> None:
    with pytest.raises(DPConfigError, match="below 1/n"):
        DPSettings(delta=0.01).check_dataset(100)
    DPSettings(delta=0.009).check_dataset(100)


def test_model_opacus_rejects_is_refused() -> None:
    validate_model(make_model())  # ours passes without fixes
    with pytest.raises(DPConfigError, match="cannot be trained with DP-SGD"):
        validate_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))


def test_opacus_modes_agree(monkeypatch) -> None:
    """hooks, functorch and ghost clipping are interchangeable: same random stream, same weights."""
    import privacy.secure_random as secure_random

    monkeypatch.setattr(secure_random, "_entropy", lambda n: bytes(n))  # the test-only path
    results = []
    for mode in ("hooks", "functorch", "ghost"):
        model = tiny_model()
        train_private(model, seed=3, settings=DPSettings(grad_sample_mode=mode), epochs=2)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0], results[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [7445, 7424, 5400, 64 * 117 - 3])
def test_the_round_plan_is_what_opacus_records(n: int) -> None:
    """117 batches make 116 Poisson steps in Opacus (int(1 / (1 / 117)) == 116): the plan must say the same."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedproof.core.model import make_model
    from privacy.dp import DPSettings, RoundPlan, make_private

    loader = DataLoader(TensorDataset(torch.zeros(n, 1, 28, 28), torch.zeros(n, dtype=torch.long)), batch_size=64)
    model = make_model()
    settings = DPSettings(max_grad_norm=1.0, delta=1e-5, target_epsilon=None, noise_multiplier=1.0,
                          accountant="prv", grad_sample_mode="hooks")
    with make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, settings, 1.0) as private:
        recorded_rate = 1 / len(private.loader)
        recorded_steps = len(private.loader)
    plan = RoundPlan.for_data(n, 64, 1)
    assert (plan.sample_rate, plan.steps) == (recorded_rate, recorded_steps)


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_the_signed_epsilon_does_not_tell_n_from_n_plus_1() -> None:
    """The review's probe: batch size 1, which the policy accepts. A device plans from its declared size, so one
    record more or less leaves its epsilon (and the rate and steps it was accounted at) exactly as they were; the
    same probe without a declared size tells them apart, so the test can fail (40 records here, as fast as 1000)."""
    rng = np.random.default_rng(4)
    config = RunConfig(dp=True, target_epsilon=3.0, delta=1e-5, batch_size=1, local_epochs=1, rounds=3,
                       grad_sample_mode="hooks")

    def epsilon(n: int, declared: int | None) -> tuple[float, tuple]:
        images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        outcome = train_round(make_model("cnn", seed=0), images, rng.integers(0, 10, size=n), config, ClientState(),
                              1, seed=1, accounting_size=declared)
        assert outcome.status == TRAINED
        return outcome.epsilon, outcome.state.spend.history

    assert epsilon(40, 40) == epsilon(41, 40) == epsilon(39, 40)
    assert epsilon(40, None)[0] != epsilon(41, None)[0]  # what the attack reads without a declared size



def test_a_device_far_below_its_declared_size_still_trains_on_its_mean() -> None:
    """Batches of n * q < 1 on average: the clipped sum is divided by that expectation, not by Opacus' int of it."""
    x, y = tiny_data(20)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with make_private(model, optimizer, loader, DPSettings(delta=1e-3), 1.0, accounting_size=100) as private:
        assert private.optimizer.expected_batch_size == pytest.approx(20 / 25)
        run_epochs(model, private.optimizer, private.criterion, private.loader, 1)
        assert private.spend(PrivacySpend()).history == ((1.0, 1 / 25, 25),)
        assert all(torch.isfinite(p).all() for p in model.parameters())
