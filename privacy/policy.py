"""A data holder's privacy policy: what its device allows, whatever the server asks.

The server sends its run settings with every message; a device trains only if they are at least as private as
its policy. Settings may *tighten* the policy (a smaller epsilon, more noise, a smaller clip, a smaller delta):
never loosen it. A request for anything weaker is refused with a :class:`PolicyRefusal` that names the rule, the
device trains nothing and sends nothing but the refusal.

A device reads its policy from its own files (``policy.json`` in its kit, written by ``fedproof provision``);
nothing in a message can name another. The defaults are the strict ones: DP and HE required, a lifetime
epsilon of 3 at delta <= 1e-5, clipping within [0.01, 1], no metrics released.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from fedproof.base.errors import Reason
from fedproof.base.files import read_bounded
from fedproof.base.json_input import loads_bounded
from privacy.dp import DPSettings
from privacy.errors import PrivacyError

if TYPE_CHECKING:
    from privacy.user_dp import UserLevelDP

_MAX_POLICY_FILE = 64 << 10


class PolicyError(PrivacyError, ValueError):
    """A policy file is missing, oversized, malformed, or states an impossible policy."""


class PolicyRefusal(PrivacyError):
    """The server asked for settings weaker than the device's policy: nothing is trained or sent."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.code = reason.value


@dataclass(frozen=True)
class PrivacyPolicy:
    dp_required: bool = True
    max_epsilon: float = 3.0
    """The largest epsilon this dataset may ever spend (every round of every run)."""
    max_delta: float = 1e-5
    min_noise_multiplier: float = 0.0
    """Noise below this is never used (0: whatever the budget calibrates)."""
    min_clip: float = 0.01
    max_clip: float = 1.0
    he_required: bool = True
    min_contributors: int = 3
    """As a decryptor: the fewest distinct clients' updates a sum must hold before this device helps decrypt it
    (a run may ask for more, never fewer; never below 2)."""
    release_metrics: bool = False
    """Whether a client training without DP may send its local loss and validation metrics."""
    max_participation: float = 1.0
    """User-level DP: the largest probability with which this device takes part in a round it is asked for (a run
    may ask for less, never more)."""
    assumed_colluders: int = 0
    """User-level DP: how many contributors of a sum this device assumes may collude with the server (their noise
    shares do not count); its own share is sized for the rest of its contributors' floor."""
    max_server_epsilon: float = math.inf
    """User-level DP against the server itself: it sees which rounds this device uploaded in, so the sampling
    amplifies nothing against it; the device sits a round out rather than pass this (inf: no cap)."""
    colluding_share: float = 0.1
    """A key committee drawn by sortition (ledger.committee): the share of the registered clients this device
    assumes may be the server's accomplices. It joins a committee key only if the holders assumed at least that."""
    max_capture_risk: float = 1e-6
    """The largest chance, over the run's draws, that the accomplices hold t seats of the committee it accepts."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_epsilon > 0, "max_epsilon must be a positive number (inf: no cap)"),
            (0 < self.max_delta < 1, "max_delta must be in (0, 1)"),
            (self.min_noise_multiplier >= 0 and math.isfinite(self.min_noise_multiplier),
             "min_noise_multiplier must be a non-negative number"),
            (0 < self.min_clip <= self.max_clip and math.isfinite(self.max_clip), "need 0 < min_clip <= max_clip"),
            (self.min_contributors >= 2, "min_contributors must be at least 2"),
            (0 < self.max_participation <= 1, "max_participation must be in (0, 1]"),
            (0 <= self.assumed_colluders < self.min_contributors,
             "assumed_colluders must be fewer than min_contributors"),
            (0 <= self.colluding_share < 1, "colluding_share must be in [0, 1)"),
            (0 < self.max_capture_risk < 1, "max_capture_risk must be in (0, 1)"),
            (self.max_server_epsilon > 0, "max_server_epsilon must be positive (inf: no cap)"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise PolicyError("invalid privacy policy: " + "; ".join(problems))

    def committee_colluders(self, registered: int) -> int:
        """How many of ``registered`` clients this device assumes may collude, for a committee draw."""
        return math.ceil(self.colluding_share * registered - 1e-9)

    def admit(self, *, dp: bool, he: bool, settings: DPSettings | None) -> DPSettings | None:
        """The DP settings this device trains with for the server's request, or :class:`PolicyRefusal`.

        The run's target epsilon, if it has one, can only lower the lifetime cap; its noise can only be raised to
        the policy's floor (more noise is always allowed)."""
        if self.he_required and not he:
            raise PolicyRefusal(Reason.HE_REQUIRED, "this device sends updates encrypted only; the run has HE off")
        if settings is None:
            if self.dp_required:
                raise PolicyRefusal(Reason.DP_REQUIRED, "this device trains with DP only; the run has DP off")
            return None
        if settings.target_epsilon is not None and settings.target_epsilon > self.max_epsilon:
            raise PolicyRefusal(Reason.EPSILON_ABOVE_POLICY, f"the run asks for epsilon {settings.target_epsilon:g}; "
                                                        f"this device allows at most {self.max_epsilon:g}")
        if settings.delta > self.max_delta:
            raise PolicyRefusal(Reason.DELTA_ABOVE_POLICY, f"the run asks for delta {settings.delta:g}; this device "
                                                      f"allows at most {self.max_delta:g}")
        if not self.min_clip <= settings.max_grad_norm <= self.max_clip:
            raise PolicyRefusal(Reason.CLIP_OUTSIDE_POLICY, f"the run clips at {settings.max_grad_norm:g}; this device "
                                                       f"allows [{self.min_clip:g}, {self.max_clip:g}]")
        if settings.noise_multiplier is not None and settings.noise_multiplier < self.min_noise_multiplier:
            raise PolicyRefusal(Reason.NOISE_BELOW_POLICY, f"the run asks for noise {settings.noise_multiplier:g}; this "
                                                      f"device adds at least {self.min_noise_multiplier:g}")
        cap = min(self.max_epsilon, settings.target_epsilon or math.inf)
        return DPSettings(max_grad_norm=settings.max_grad_norm, delta=settings.delta,
                          target_epsilon=cap if math.isfinite(cap) else None,
                          noise_multiplier=settings.noise_multiplier, accountant=settings.accountant,
                          grad_sample_mode=settings.grad_sample_mode)

    def admit_user(self, *, he: bool, clip: float, noise: float | None, participation: float, delta: float,
                   target_epsilon: float | None, min_contributors: int, accountant: str, rounds: int,
                   count_noise: float = 0.0) -> UserLevelDP:
        """The user-level DP this device takes part with, or :class:`PolicyRefusal`. The run may only tighten it:
        a smaller participation, clip, delta or budget, more noise; the noise share is sized by this device's own
        floor of contributors and its own assumption about colluders, never by a message."""
        from privacy.user_dp import UserLevelDP, calibrate_user_noise

        if not he:
            raise PolicyRefusal(Reason.HE_REQUIRED, "user-level DP adds only a share of the noise on each device: it "
                                                    "needs encrypted aggregation, and the run has HE off")
        if delta > self.max_delta:
            raise PolicyRefusal(Reason.DELTA_ABOVE_POLICY, f"the run asks for delta {delta:g}; this device allows at "
                                                          f"most {self.max_delta:g}")
        if not self.min_clip <= clip <= self.max_clip:
            raise PolicyRefusal(Reason.CLIP_OUTSIDE_POLICY, f"the run clips updates at {clip:g}; this device allows "
                                                           f"[{self.min_clip:g}, {self.max_clip:g}]")
        if target_epsilon is not None and target_epsilon > self.max_epsilon:
            raise PolicyRefusal(Reason.EPSILON_ABOVE_POLICY, f"the run asks for epsilon {target_epsilon:g}; this "
                                                            f"device allows at most {self.max_epsilon:g}")
        cap = min(self.max_epsilon, target_epsilon or math.inf)
        q = min(participation, self.max_participation)
        sigma = noise or calibrate_user_noise(cap, delta, q, rounds, accountant)
        return UserLevelDP(clip=clip, noise=self.noise_floor(sigma), participation=q,
                           floor=self.contributors_floor(min_contributors), colluders=self.assumed_colluders,
                           delta=delta, max_epsilon=cap, accountant=accountant,
                           max_server_epsilon=self.max_server_epsilon, count_noise=count_noise)

    def contributors_floor(self, requested: int) -> int:
        """The fewest contributors a sum must have for this device to help decrypt it: the run's number, raised to
        the policy's."""
        return max(2, self.min_contributors, requested)

    def noise_floor(self, noise: float) -> float:
        """The noise multiplier to train with: the calibrated or requested one, raised to the policy's floor."""
        return max(noise, self.min_noise_multiplier)

    # ------------------------------------------------------------------------------------------- its file
    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, what: str = "privacy policy") -> PrivacyPolicy:
        try:
            doc = loads_bounded(text)
            if not isinstance(doc, dict) or doc.pop("version", None) != 1:
                raise ValueError("not a version-1 policy")
            if type(doc.pop("shared_key_allowed", False)) is not bool:  # kits made before the shared-key scheme
                raise ValueError("'shared_key_allowed' is not a policy field of type bool")  # went: ignored
            kinds = {"dp_required": bool, "he_required": bool, "release_metrics": bool, "min_contributors": int,
                     "assumed_colluders": int}
            for key, value in doc.items():
                wanted = kinds.get(key, float)
                ok = type(value) is wanted if wanted in (bool, int) else type(value) in (int, float)
                if key not in cls.__dataclass_fields__ or not ok:
                    raise ValueError(f"{key!r} is not a policy field of type {wanted.__name__}")
            return cls(**{k: float(v) if kinds.get(k, float) is float else v for k, v in doc.items()})
        except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep to parse
            raise PolicyError(f"{what}: {exc if not isinstance(exc, RecursionError) else 'nested too deeply'}") from exc

    @classmethod
    def load(cls, path: Path) -> PrivacyPolicy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"no privacy policy at {path} (fedproof provision writes one into every client kit)")
        data = read_bounded(path, _MAX_POLICY_FILE, "privacy policy", PolicyError)
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: not UTF-8 text") from exc
        return cls.from_json(text, str(path))
