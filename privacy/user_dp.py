"""User-level DP with noise the server cannot remove: DP-FedAvg (McMahan et al., ICLR 2018) whose Gaussian noise
every device adds a share of, under secure aggregation (distributed DP: Kairouz, Liu, Steinke, ICML 2021).

A device protects its whole dataset, not one record: it clips its whole model update to L2 norm ``clip`` (C), adds
Gaussian noise of standard deviation ``noise * C / sqrt(floor - colluders)`` per coordinate, and encrypts it. A key
holder decrypts only sums of at least ``floor`` distinct contributors' updates, so any sum the server can learn
holds at least ``floor - colluders`` honest shares: noise of standard deviation at least ``noise * C``, whatever the
server does. ``colluders`` is the assumption: how many of a sum's contributors may be the server's accomplices,
who know (and could subtract) their own shares.

Each device samples itself: for every round of a run it draws, from its own CSPRNG, a coin that says "take part"
with probability ``q`` (Balle et al., "Privacy amplification via random check-ins", NeurIPS 2020), so amplification
by sampling holds however often the server asks. It draws the coins ahead, up to the first that says yes, and tells
the server that round: the server then asks only the devices due in a round, instead of all of them every round.
Knowing the round early tells the server nothing it would not learn from the uploads (it is accounted without
amplification anyway, below). Its accountant composes one step of the subsampled Gaussian mechanism (rate q,
noise multiplier ``noise``) for every coin drawn, whether or not it said yes; it draws no coin past its lifetime
budget.

Adversary model, beside ours: Kairouz et al. assume an honest-but-curious server that runs secure aggregation as
specified. Here the decryptors' checks (fl_client.threshold) enforce the floor against an active server; the
device's own sampling and accountant do not depend on what the server asks; what remains assumed is the number of
colluding contributors in a sum.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from opacus.accountants.utils import get_noise_multiplier

from privacy.dp import EPSILON_SLACK, PrivacySpend
from privacy.errors import BudgetExhausted, DPConfigError
from privacy.secure_random import SecureRandom


@dataclass(frozen=True)
class UserLevelDP:
    """How one device takes part in user-level DP rounds."""

    clip: float
    """C: the largest L2 norm of a device's whole update."""
    noise: float
    """The noise multiplier of any accepted sum: its noise has standard deviation at least ``noise * clip``."""
    participation: float
    """q: the probability the device takes part when asked."""
    floor: int
    """The fewest contributors of a sum the device's key share helps decrypt (its policy's, or the run's)."""
    colluders: int
    """How many of those may collude with the server (their shares do not count)."""
    delta: float
    max_epsilon: float
    """The device's lifetime user-level budget."""
    accountant: str = "prv"
    max_server_epsilon: float = math.inf
    """The cap on what the server, which sees the rounds the device took part in, learns (no amplification)."""
    count_noise: float = 0.0
    """Adaptive clipping (Andrew et al., NeurIPS 2021): the standard deviation of the noise on the sum of the
    devices' unclipped bits, sigma_b (0: a fixed clip, no bit sent)."""

    def __post_init__(self) -> None:
        checks = [
            (self.clip > 0 and math.isfinite(self.clip), "the update clip must be a positive number"),
            (self.noise > 0 and math.isfinite(self.noise), "the user-level noise multiplier must be positive"),
            (0 < self.participation <= 1, "participation must be in (0, 1]"),
            (0 <= self.colluders < self.floor, "colluders must be fewer than the contributors' floor"),
            (0 < self.delta < 1, "delta must be in (0, 1)"),
            (self.count_noise == 0 or 2 * self.count_noise > self.noise,
             "the clipped-count noise must exceed half the noise multiplier (Andrew et al.'s split)"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise DPConfigError("invalid user-level DP settings: " + "; ".join(problems))

    @property
    def update_noise(self) -> float:
        """The noise multiplier on the updates' sum: ``noise`` itself, or with adaptive clipping the z_Delta of
        Andrew et al. (Thm. 1), ``(noise^-2 - (2 count_noise)^-2)^-1/2``, so that the sum and the count released
        together are one Gaussian mechanism of multiplier ``noise`` (what the accountant composes)."""
        if not self.count_noise:
            return self.noise
        return (self.noise ** -2 - (2 * self.count_noise) ** -2) ** -0.5

    @property
    def share_std(self) -> float:
        """Each device's share of the noise: ``floor - colluders`` honest shares add up to ``update_noise * clip``."""
        return self.update_noise * self.clip / math.sqrt(self.floor - self.colluders)

    @property
    def count_share_std(self) -> float:
        """Each device's share of the count's noise: the honest shares add up to ``count_noise``."""
        return self.count_noise / math.sqrt(self.floor - self.colluders)

    def after_taking_part(self, seen: PrivacySpend) -> PrivacySpend:
        """The spend as the server sees it after one more round taken part in: one Gaussian step, not subsampled
        (the server knows the device uploaded)."""
        return seen.after(self.noise, 1.0, 1)

    def server_allows(self, seen: PrivacySpend) -> bool:
        """Whether taking part once more keeps the server's view within ``max_server_epsilon``."""
        if math.isinf(self.max_server_epsilon):
            return True
        return self.after_taking_part(seen).epsilon(self.delta, self.accountant) <= self.max_server_epsilon + \
            EPSILON_SLACK

    def after_coins(self, spent: PrivacySpend, coins: int) -> PrivacySpend:
        """The spend after ``coins`` more rounds' coins drawn (taken part in or not: the sampling is what is
        accounted)."""
        return spent.after(self.noise, self.participation, coins)

    def coins_within_budget(self, spent: PrivacySpend, wanted: int) -> int:
        """The most of ``wanted`` more rounds' coins the lifetime budget allows (a bisection: a few accountant calls,
        not one per round)."""
        def fits(coins: int) -> bool:
            return self.after_coins(spent, coins).epsilon(self.delta, self.accountant) <= \
                self.max_epsilon + EPSILON_SLACK

        if math.isinf(self.max_epsilon) or fits(wanted):
            return wanted
        low, high = 0, wanted  # fits(low), not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def exhausted(self, spent: PrivacySpend) -> BudgetExhausted:
        """Why one more round's coin would pass the lifetime cap."""
        return BudgetExhausted(spent.epsilon(self.delta, self.accountant),
                               self.after_coins(spent, 1).epsilon(self.delta, self.accountant), self.max_epsilon)


@functools.lru_cache(maxsize=256)
def calibrate_user_noise(target_epsilon: float, delta: float, participation: float, rounds: int,
                         accountant: str = "prv") -> float:
    """The noise multiplier that keeps ``rounds`` asked rounds at rate ``participation`` within ``target_epsilon``
    (a pure function, remembered: the search takes seconds, and a device is asked every round)."""
    try:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=participation, steps=rounds, accountant=accountant,
                                          epsilon_tolerance=0.01))
    except ValueError as exc:
        raise DPConfigError(f"cannot reach user-level epsilon {target_epsilon:g} over {rounds} rounds at "
                            f"participation {participation:g}: {exc}") from exc


def rounds_to_next_part(participation: float, rng: SecureRandom) -> int:
    """How many rounds' coins, drawn one after another from this round on, it takes until one says "take part":
    Geometric(q) on 1, 2, ..., from one uniform of the device's CSPRNG (never from a message). The same law as one
    independent coin per round (the gaps between a Bernoulli process's successes), drawn at once so that a device
    can tell the server in advance which round it next takes part in (random check-ins: Balle et al. 2020)."""
    if participation >= 1:
        return 1
    u = float(rng.uniform(1)[0])  # in [0, 1): P(result > k) = P(1 - u <= (1 - q)^k) = (1 - q)^k
    return int(math.floor(math.log1p(-u) / math.log1p(-participation))) + 1


def clip_update(delta: np.ndarray, clip: float) -> tuple[np.ndarray, bool]:
    """``delta`` scaled to L2 norm at most ``clip``, and whether it already was (the adaptive-clipping bit)."""
    norm = float(np.linalg.norm(delta))
    if norm <= clip:
        return delta, True
    return delta * (clip / norm), False


def noised_update(delta: np.ndarray, settings: UserLevelDP, rng: SecureRandom) -> np.ndarray:
    """The clipped update plus this device's share of the noise (drawn on the device, from its CSPRNG); with
    adaptive clipping, one more value: the unclipped bit plus its share of the count's noise."""
    clipped, within = clip_update(np.asarray(delta, np.float64).ravel(), settings.clip)
    noised = clipped + rng.standard_normal(clipped.size) * settings.share_std
    if not settings.count_noise:
        return noised
    return np.append(noised, float(within) + float(rng.standard_normal(1)[0]) * settings.count_share_std)


def next_clip(clip: float, unclipped_share: float, quantile: float, learning_rate: float) -> float:
    """Andrew et al.'s geometric update toward the clip that ``quantile`` of the updates fit under:
    ``C exp(-eta (b - gamma))``, ``b`` the noised share of updates that were not clipped."""
    return clip * math.exp(-learning_rate * (unclipped_share - quantile))
