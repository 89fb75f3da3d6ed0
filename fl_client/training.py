"""A client's round of local training: plain SGD, or DP-SGD under a privacy budget.

One training loop serves both; with DP on, :func:`privacy.dp.make_private` swaps in Opacus' private
optimizer, criterion and Poisson-sampled loader, and the round is refused up front if it would take the
client past its epsilon budget.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedproof.core.compute import select_device
from fedproof.core.config import RunConfig
from fedproof.core.protocol import BUDGET_EXHAUSTED, POLICY_REFUSED, TRAINED
from fedproof.core.model import ExtractorHead
from fedproof.core.features import features
from fl_client.policy import run_policy
from fl_client.state import ClientState
from privacy.dp import RoundPlan, calibrate_noise, check_budget, make_private
from privacy.errors import BudgetExhausted
from privacy.policy import PrivacyPolicy, PolicyRefusal

@dataclass(frozen=True)
class RoundOutcome:
    status: str
    """TRAINED; BUDGET_EXHAUSTED or POLICY_REFUSED when the client declined to train (``reason`` says why)."""
    loss: float
    """Mean training loss over the last local epoch (0 when declined)."""
    num_examples: int
    epsilon: float | None
    """Privacy spent so far (after this round), None without DP."""
    state: ClientState
    reason: str = ""


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, loader: DataLoader, epochs: int,
               device: torch.device | None = None) -> float:
    """Train for ``epochs`` passes over ``loader`` (each batch moved to ``device``, where the model is); return the
    mean loss of the last one."""
    model.train()
    epoch_loss = 0.0
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            # Poisson sampling can draw an empty batch: Opacus still takes its step (noise alone), as the accountant
            # assumes. Skipping it would make the number of steps, and so the signed epsilon, depend on the data.
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            with warnings.catch_warnings():  # Opacus' hooks on a head whose inputs (fixed features) need no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimizer.step()
            if not len(yb):
                continue  # its loss is the mean of nothing
            total += loss.item() * len(yb)
            count += len(yb)
        epoch_loss = total / max(count, 1)
    return epoch_loss


def train_round(
    model: ExtractorHead,
    images: np.ndarray,
    labels: np.ndarray,
    config: RunConfig,
    state: ClientState,
    server_round: int,
    seed: int,
    policy: PrivacyPolicy | None = None,
    accounting_size: int | None = None,
) -> RoundOutcome:
    """One round of local training of ``model``'s head (in place) on the client's data, as private as the run asks
    and at least as private as ``policy`` (default: the run's own settings) demands; a request weaker than the
    policy is refused (POLICY_REFUSED) before anything is trained. The head trains on the extractor's features,
    computed once per dataset: the extractor is fixed, so they are a public function of each record and DP-SGD's
    per-sample clipping and noise on the head protect each record exactly as they would on the whole model.

    ``accounting_size``: the device's public (declared) dataset size. Sample rate, steps, calibrated noise and
    so the signed epsilon are planned from it, not from ``len(labels)``, so the epsilon tells n and n + 1 apart
    no better than the declared weight does. Without one, the exact size is the update's signed weight anyway."""
    policy = policy or run_policy(config)
    try:
        dp = policy.admit(dp=config.dp, he=config.he, settings=config.dp_settings())
    except PolicyRefusal as exc:
        return RoundOutcome(POLICY_REFUSED, 0.0, 0, None, state, str(exc))
    n = len(labels)
    x, y = features(model, images), torch.from_numpy(labels.astype(np.int64))
    loader = DataLoader(
        TensorDataset(x, y), batch_size=config.training_batch(), shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    device = select_device(config.device)
    head = model.head.to(device)  # the features stay where they are: each batch moves (an empty Poisson batch too)
    try:
        return _train(head, loader, config, state, server_round, n, dp, policy, accounting_size, device)
    finally:
        head.to("cpu")  # the update is read from the CPU copy


def _train(head: nn.Module, loader: DataLoader, config: RunConfig, state: ClientState, server_round: int, n: int,
           dp, policy: PrivacyPolicy, accounting_size: int | None, device: torch.device) -> RoundOutcome:
    optimizer = torch.optim.SGD(head.parameters(), lr=config.learning_rate(), momentum=config.momentum)
    if dp is None:
        loss = run_epochs(head, optimizer, nn.CrossEntropyLoss(), loader, config.training_epochs(), device)
        return RoundOutcome(TRAINED, loss, n, None, state.after_training(server_round, n))

    dp.check_dataset(n)
    plan = RoundPlan.for_data(accounting_size or n, config.training_batch(), config.training_epochs())
    noise = policy.noise_floor(state.noise_multiplier or dp.noise_multiplier or calibrate_noise(dp, plan, config.rounds))
    try:
        check_budget(state.spend, noise, plan, dp)
    except BudgetExhausted as exc:
        return RoundOutcome(BUDGET_EXHAUSTED, 0.0, 0, exc.spent, state, str(exc))
    with make_private(head, optimizer, loader, dp, noise, accounting_size) as private:
        loss = run_epochs(head, private.optimizer, private.criterion, private.loader, config.training_epochs(), device)
        spend = private.spend(state.spend)
    epsilon = spend.epsilon(dp.delta, dp.accountant)
    return RoundOutcome(TRAINED, loss, n, epsilon, state.after_training(server_round, n, spend, noise))


def train_plain(model: ExtractorHead, images: np.ndarray, labels: np.ndarray, config: RunConfig, seed: int) -> float:
    """Local SGD on the head without per-sample DP (user-level DP clips and noises the whole update instead);
    returns the last epoch's mean loss."""
    x, y = features(model, images), torch.from_numpy(labels.astype(np.int64))
    loader = DataLoader(TensorDataset(x, y), batch_size=config.training_batch(), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    device = select_device(config.device)
    head = model.head.to(device)
    try:
        optimizer = torch.optim.SGD(head.parameters(), lr=config.learning_rate(), momentum=config.momentum)
        return run_epochs(head, optimizer, nn.CrossEntropyLoss(), loader, config.training_epochs(), device)
    finally:
        head.to("cpu")
