"""A device's round under user-level DP (privacy.user_dp): its own coin, its own accountant, its share of the noise.

Asked for round r, the device

1. checks the run against its policy (the run may only tighten it) and its lifetime user-level budget;
2. decides, once per round, whether it takes part: with probability q, from its own CSPRNG. The answer and one
   accountant step are kept before anything else happens; asked for r again it gives the same answer and spends
   nothing more; asked for an earlier round than one already asked, it refuses (a server must not re-roll coins);
3. if it takes part: trains locally, clips its whole update to C, adds its share of the noise, and encrypts it
   with weight 1 (each device counts once: a weight would tell its dataset's size).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict

from fedproof.core.client_data import ClientData
from fedproof.core.config import RunConfig
from fedproof.core.model import ExtractorHead
from fedproof.core.protocol import (
    BUDGET_EXHAUSTED,
    NOT_SAMPLED,
    POLICY_REFUSED,
    SAMPLED,
    TRAINED,
    ClientReport,
)
from fedproof.core.weights import hash_model
from fl_client import threshold
from fl_client.policy import client_policy
from fl_client.secure_update import checked_delta
from fl_client.signing import client_id, sign_update
from fl_client.state import ClientState
from fl_client.training import train_plain
from privacy.errors import BudgetExhausted, DPConfigError
from privacy.policy import PolicyRefusal
from privacy.secure_random import SecureRandom
from privacy.user_dp import UserLevelDP, noised_update, takes_part

USER_WEIGHT = 1
"""What each device's update weighs under user-level DP: one device, one vote."""


def settings_for(config: RunConfig, context: Context) -> UserLevelDP:
    policy = client_policy(config, context)
    return policy.admit_user(he=config.he, clip=config.update_clip, noise=config.user_noise or None,
                             participation=config.participation, delta=config.delta,
                             target_epsilon=config.target_epsilon or None, min_contributors=config.min_contributors,
                             accountant=config.accountant, rounds=config.rounds)


def asked(state: ClientState, settings: UserLevelDP, server_round: int, rng: SecureRandom
          ) -> tuple[ClientState, tuple[str, str] | None]:
    """This device asked for ``server_round``: its state after (one coin and one accountant step for a round not
    asked before; nothing new for the same round again), and why it refuses, if it does (a status and a reason)."""
    if server_round < state.last_asked:
        return state, (NOT_SAMPLED, f"round {server_round} is older than round {state.last_asked}, already asked")
    if server_round > state.last_asked:
        try:
            settings.check_budget(state.user_spend)
        except BudgetExhausted as exc:
            return state, (BUDGET_EXHAUSTED, str(exc))
        coin = takes_part(settings.participation, rng)
        if coin and not settings.server_allows(state.server_spend):  # the server would learn too much: sit out
            coin = False
        state = dataclasses.replace(state, user_spend=settings.after_asked(state.user_spend), last_asked=server_round,
                                    took_part=coin,
                                    server_spend=settings.after_taking_part(state.server_spend) if coin
                                    else state.server_spend)
    return state, None


def _report(me: str, status: str, epsilon: float | None, reason: str = "") -> RecordDict:
    return RecordDict({"client": ClientReport(me, status, epsilon, reason).to_record(),
                       "metrics": MetricRecord({"num-examples": 0})})


def _decide(config: RunConfig, server_round: int, context: Context, state: ClientState, save
            ) -> tuple[UserLevelDP | None, ClientState, RecordDict | None]:
    """The round's decision, kept before anything else happens: the settings, the state after the coin, and the
    decline to send (None when this device takes part)."""
    me = client_id(context)
    try:
        settings = settings_for(config, context)
    except (PolicyRefusal, DPConfigError) as exc:
        return None, state, _report(me, POLICY_REFUSED, None, str(exc))
    state, refusal = asked(state, settings, server_round, SecureRandom.from_os())
    if refusal is not None:
        return settings, state, _report(me, refusal[0], state.user_spend.epsilon(settings.delta, settings.accountant),
                                        refusal[1])
    save(state)  # the coin and the accountant step are kept before any update can leave
    if not state.took_part:
        threshold.Upload.forget(context)  # an earlier round's ciphertexts: nothing to reveal any more
        return settings, state, _report(me, NOT_SAMPLED, state.user_spend.epsilon(settings.delta, settings.accountant),
                                        f"this device takes part with probability {settings.participation:g}")
    return settings, state, None


def user_level_check_in(config: RunConfig, server_round: int, context: Context, state: ClientState, save
                        ) -> RecordDict:
    """Whether this device takes part in ``server_round`` (``SAMPLED``), or its decline; before any model is sent,
    so a server asks every device cheaply and sends the model only to those that take part."""
    settings, state, declined = _decide(config, server_round, context, state, save)
    if declined is not None:
        return declined
    assert settings is not None
    return _report(client_id(context), SAMPLED, state.user_spend.epsilon(settings.delta, settings.accountant))


def user_level_reply(config: RunConfig, server_round: int, model: ExtractorHead, data: ClientData,
                     global_arrays: ArrayRecord, context: Context, state: ClientState, seed: int,
                     save, sent_key: ArrayRecord | None = None) -> RecordDict:
    """The train reply under user-level DP: a decline (policy, budget, not sampled) or the signed commitment to an
    encrypted, clipped and noised update. ``save`` keeps the device's state (called before any update leaves)."""
    settings, state, declined = _decide(config, server_round, context, state, save)
    if declined is not None:
        return declined
    assert settings is not None
    epsilon = state.user_spend.epsilon(settings.delta, settings.accountant)
    train_plain(model, data.train_x, data.train_y, config, seed)
    # clipped to L2 norm C first, the update is in range whatever it was (only NaN or infinity is refused)
    delta = checked_delta(ArrayRecord(model.state_dict()), global_arrays, math.inf)
    noised = noised_update(delta, settings, SecureRandom.from_os())
    content = _report(client_id(context), TRAINED, epsilon)
    threshold.encrypt_update(np.asarray(noised), USER_WEIGHT, context, sent_key).put(content)
    content["metrics"] = MetricRecord({"num-examples": USER_WEIGHT})
    sign_update(content, config, context, server_round, USER_WEIGHT, epsilon, hash_model(global_arrays, config.run_id))
    return threshold.withhold(content, server_round, context)
