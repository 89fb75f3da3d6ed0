"""A device's round under user-level DP (privacy.user_dp): its own coin, its own accountant, its share of the noise.

Asked for round r, the device

1. checks the run against its policy (the run may only tighten it) and its lifetime user-level budget;
2. draws the coins of the rounds ahead, from its own CSPRNG, each "take part" with probability q, up to the first
   that says yes (privacy.user_dp): one accountant step each, kept before anything else happens. Asked for a round
   already drawn, it gives the same answer and spends nothing more; every reply names the round it takes part in
   next, so the server need not ask it before then (a server that asks anyway changes nothing);
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
from privacy.errors import DPConfigError
from privacy.policy import PolicyRefusal
from privacy.secure_random import SecureRandom
from privacy.user_dp import UserLevelDP, noised_update, rounds_to_next_part

USER_WEIGHT = 1
"""What each device's update weighs under user-level DP: one device, one vote."""


def settings_for(config: RunConfig, context: Context) -> UserLevelDP:
    policy = client_policy(config, context)
    return policy.admit_user(he=config.he, clip=config.update_clip, noise=config.user_noise or None,
                             participation=config.participation, delta=config.delta,
                             target_epsilon=config.target_epsilon or None, min_contributors=config.min_contributors,
                             accountant=config.accountant, rounds=config.rounds,
                             count_noise=config.clip_count_noise if config.count_slots else 0.0)


def asked(state: ClientState, settings: UserLevelDP, server_round: int, last_round: int, rng: SecureRandom
          ) -> tuple[ClientState, tuple[str, str] | None]:
    """This device asked for ``server_round`` of a run of ``last_round`` rounds: its state after (new coins only
    for a round past those drawn), and why it declines, if it does (a status and a reason)."""
    if server_round > state.drawn_through:
        state, refusal = draw_ahead(state, settings, server_round, last_round, rng)
        if refusal is not None:
            return state, refusal
    if server_round == state.next_part:
        return state, None
    return state, (NOT_SAMPLED, f"this device's coin for round {server_round} said no "
                                f"(it takes part with probability {settings.participation:g})")


def draw_ahead(state: ClientState, settings: UserLevelDP, first: int, last_round: int, rng: SecureRandom
               ) -> tuple[ClientState, tuple[str, str] | None]:
    """The coins of rounds ``first``, ``first + 1``, ... up to the first that says "take part", the run's last
    round or the lifetime budget, whichever comes first: one accountant step each, in the state returned (which the
    caller keeps before anything leaves the device). A refusal when the budget allows no coin at all, or taking part
    again would pass the cap on what the server learns."""
    if not settings.server_allows(state.server_spend):
        return state, (BUDGET_EXHAUSTED, "taking part once more would pass this device's cap on what the server, "
                                         "which sees who uploads, learns (max_server_epsilon)")
    gap = rounds_to_next_part(settings.participation, rng)
    coins = settings.coins_within_budget(state.user_spend, min(gap, max(1, last_round - first + 1)))
    if coins == 0:
        return state, (BUDGET_EXHAUSTED, str(settings.exhausted(state.user_spend)))
    takes_part = coins == gap
    state = dataclasses.replace(
        state, user_spend=settings.after_coins(state.user_spend, coins), drawn_through=first + coins - 1,
        next_part=first + coins - 1 if takes_part else 0,
        server_spend=settings.after_taking_part(state.server_spend) if takes_part else state.server_spend)
    return state, None


def part_taken(state: ClientState, settings: UserLevelDP, server_round: int, last_round: int, rng: SecureRandom
               ) -> ClientState:
    """After this device took its part in ``server_round``: asked for it again, it declines (one update a round);
    the coins ahead are drawn, so the server asks it again only when it is due."""
    state = dataclasses.replace(state, next_part=0)
    if server_round < last_round:
        state, _ = draw_ahead(state, settings, server_round + 1, last_round, rng)
    return state


def next_round(state: ClientState, server_round: int) -> int:
    """The round after ``server_round`` this device takes part in, as far as it has drawn (0: none in this run)."""
    return state.next_part if state.next_part > server_round else 0


def _report(me: str, status: str, epsilon: float | None, reason: str = "", next_round: int = 0) -> RecordDict:
    return RecordDict({"client": ClientReport(me, status, epsilon, reason, next_round).to_record(),
                       "metrics": MetricRecord({"num-examples": 0})})


def _decide(config: RunConfig, server_round: int, context: Context, state: ClientState, save
            ) -> tuple[UserLevelDP | None, ClientState, RecordDict | None]:
    """The round's decision, kept before anything else happens: the settings, the state after the coins, and the
    decline to send (None when this device takes part)."""
    me = client_id(context)
    try:
        settings = settings_for(config, context)
    except (PolicyRefusal, DPConfigError) as exc:
        return None, state, _report(me, POLICY_REFUSED, None, str(exc))
    before = state
    state, refusal = asked(state, settings, server_round, config.rounds, SecureRandom.from_os())
    if state != before:
        save(state)  # the coins and their accountant steps are kept before anything leaves the device
    if refusal is None:
        return settings, state, None
    if refusal[0] == NOT_SAMPLED:
        threshold.Upload.forget(context)  # an earlier round's ciphertexts: nothing to reveal any more
    return settings, state, _report(me, refusal[0], state.user_spend.epsilon(settings.delta, settings.accountant),
                                    refusal[1], next_round(state, server_round))


def user_level_check_in(config: RunConfig, server_round: int, context: Context, state: ClientState, save
                        ) -> RecordDict:
    """Whether this device takes part in ``server_round`` (``SAMPLED``), or its decline and the round it takes part
    in next; before any model is sent, so a server asks devices it knows nothing of cheaply and sends the model only
    to those that take part."""
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
    epsilon = state.user_spend.epsilon(settings.delta, settings.accountant)  # signed: the spend through this round
    state = part_taken(state, settings, server_round, config.rounds, SecureRandom.from_os())
    save(state)
    train_plain(model, data.train_x, data.train_y, config, seed)
    # clipped to L2 norm C first, the update is in range whatever it was (only NaN or infinity is refused)
    delta = checked_delta(ArrayRecord(model.state_dict()), global_arrays, math.inf)
    noised = noised_update(delta, settings, SecureRandom.from_os())
    content = _report(client_id(context), TRAINED, epsilon, next_round=next_round(state, server_round))
    threshold.encrypt_update(np.asarray(noised), USER_WEIGHT, context, sent_key).put(content)
    content["metrics"] = MetricRecord({"num-examples": USER_WEIGHT})
    sign_update(content, config, context, server_round, USER_WEIGHT, epsilon, hash_model(global_arrays, config.run_id))
    return threshold.withhold(content, server_round, context)
