"""User-level DP with noise the server cannot remove: the device's own coin, its accountant, its share of the noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedproof.core.protocol import BUDGET_EXHAUSTED, NOT_SAMPLED
from fl_client.state import ClientState
from fl_client.user_level import asked, next_round, part_taken
from privacy.dp import PrivacySpend
from privacy.errors import DPConfigError
from privacy.policy import PolicyRefusal, PrivacyPolicy
from privacy.secure_random import SecureRandom
from privacy.user_dp import UserLevelDP, calibrate_user_noise, clip_update, noised_update


def settings(**kw) -> UserLevelDP:
    base = dict(clip=0.3, noise=1.0, participation=0.1, floor=4, colluders=1, delta=1e-5, max_epsilon=50.0,
                accountant="rdp")  # the devices' default is PRV; RDP answers in a millisecond
    return UserLevelDP(**{**base, **kw})


def test_a_server_that_asks_every_round_gets_a_device_at_most_q_of_the_time() -> None:
    """Asked 2,000 rounds (and each round three times), the device takes part within the binomial bound of q; its
    accountant counts every round's coin once, however often it was asked."""
    s, state, rng = settings(participation=0.1, max_epsilon=math.inf), ClientState(), SecureRandom.from_os()
    taken: list[int] = []
    for server_round in range(1, 2001):
        answers = set()
        for _ in range(3):  # asking again for the same round re-rolls nothing and spends nothing
            state, refusal = asked(state, s, server_round, 2000, rng)
            assert refusal is None or refusal[0] == NOT_SAMPLED
            answers.add(refusal is None)
            assert state.user_spend.steps == state.drawn_through >= server_round
        assert len(answers) == 1
        if refusal is None:
            taken.append(server_round)
    mean, sd = 2000 * 0.1, math.sqrt(2000 * 0.1 * 0.9)
    assert abs(len(taken) - mean) < 5 * sd  # 200 +- 67
    gaps = np.diff([0, *taken])
    assert abs(float(np.mean(gaps)) - 10) < 2  # geometric gaps of mean 1/q: the law of one coin per round
    said_no = next(r for r in range(1999, 0, -1) if r not in taken)
    state, refusal = asked(state, s, said_no, 2000, rng)  # an earlier round: its coin is kept, none drawn again
    assert refusal is not None and refusal[0] == NOT_SAMPLED and state.user_spend.steps == 2000


def test_a_device_names_its_next_round_and_is_charged_for_no_coin_past_the_run_or_its_budget() -> None:
    """The coins ahead stop at the first that says yes, at the run's last round and at the lifetime budget: a
    device asked for round 1 of a 5-round run at q = 0.01 is charged 5 coins at most, never the 100 its gap says."""
    rng = SecureRandom.from_os()
    state, refusal = asked(ClientState(), settings(participation=0.01, max_epsilon=math.inf), 1, 5, rng)
    assert state.user_spend.steps == state.drawn_through <= 5
    if refusal is not None:
        assert next_round(state, 1) in (0, state.drawn_through)
    tight = settings(participation=0.01, noise=1.0, max_epsilon=1.0)
    affordable = tight.coins_within_budget(PrivacySpend(), 10_000)
    assert 0 < affordable < 10_000
    assert tight.after_coins(PrivacySpend(), affordable).epsilon(1e-5, "rdp") <= 1.0 + 0.01
    assert tight.after_coins(PrivacySpend(), affordable + 1).epsilon(1e-5, "rdp") > 1.0
    state, _ = asked(ClientState(), tight, 1, 10_000, rng)
    assert state.drawn_through <= affordable
    spent, refusal = asked(ClientState(user_spend=tight.after_coins(PrivacySpend(), affordable)), tight, 1, 10, rng)
    assert refusal is not None and refusal[0] == BUDGET_EXHAUSTED and spent.user_spend.steps == affordable


def test_a_server_that_asks_again_for_a_round_a_device_took_part_in_gets_no_second_update() -> None:
    """Two noised updates of one round would average their noise shares down: once a device has taken its part in a
    round, asking for that round again (or any earlier one) gets a decline and spends nothing."""
    s, rng = settings(participation=0.5, max_epsilon=math.inf), SecureRandom.from_os()
    state, server_round = ClientState(), 0
    refusal: tuple[str, str] | None = (NOT_SAMPLED, "")
    while refusal is not None:  # a round this device takes part in
        server_round += 1
        state, refusal = asked(state, s, server_round, 1000, rng)
    for last_round in (1000, server_round):  # mid-run (the coins ahead are drawn), and the run's last round
        taken = part_taken(state, s, server_round, last_round, rng)
        spent, seen = taken.user_spend, taken.server_spend
        for again in range(1, server_round + 1):
            after, refusal = asked(taken, s, again, last_round, rng)
            assert refusal is not None and refusal[0] == NOT_SAMPLED
            assert (after.user_spend, after.server_spend) == (spent, seen)
        assert (next_round(taken, server_round) > server_round) == (last_round > server_round)


def test_the_server_which_sees_who_uploads_is_accounted_without_amplification_and_can_be_capped() -> None:
    """Sampling hides nothing from the server: it received the device's ciphertexts. The device keeps a second
    accountant, one unsampled Gaussian step per round it took part in, and stops taking part rather than pass its
    policy's cap on it."""
    s, state, rng = settings(participation=0.5, max_epsilon=math.inf), ClientState(), SecureRandom.from_os()
    for server_round in range(1, 41):
        state, _ = asked(state, s, server_round, 40, rng)
    taken = state.server_spend.steps
    assert 5 < taken < 35 and state.server_spend.history == ((1.0, 1.0, taken),)
    one = PrivacySpend().after(1.0, 1.0, 1).epsilon(1e-5, "rdp")
    capped, state = settings(participation=1.0, max_epsilon=math.inf, max_server_epsilon=one * 2.5), ClientState()
    took = []
    for server_round in range(1, 11):
        state, refusal = asked(state, capped, server_round, 10, rng)
        assert refusal is None or refusal[0] == BUDGET_EXHAUSTED
        took.append(refusal is None)
    assert 1 <= sum(took) < 10 and took == sorted(took, reverse=True)  # it stopped uploading once the cap was near
    assert state.server_spend.epsilon(1e-5, "rdp") <= one * 2.5 + 0.01


@pytest.mark.slow  # two seconds of accounting
def test_a_devices_user_level_epsilon_composes_across_runs_and_stops_at_its_lifetime_cap() -> None:
    s = settings(noise=1.2, participation=0.1, max_epsilon=3.0)  # about 20 rounds asked
    state, rng, spent = ClientState(run_id="a"), SecureRandom.from_os(), []
    for run in ("a", "b", "c", "d", "e", "f"):
        state = ClientState(run_id=run, user_spend=state.user_spend)  # a new run: its rounds count from 1 again
        for server_round in range(1, 9):  # runs of 8 rounds
            state, refusal = asked(state, s, server_round, 8, rng)
            if refusal is not None and refusal[0] == BUDGET_EXHAUSTED:
                break
            spent.append(state.user_spend.epsilon(s.delta, s.accountant))
        else:
            continue
        break
    assert spent == sorted(spent) and 2.9 < spent[-1] <= 3.0 + 0.01
    assert len(spent) > 16  # it spanned three runs: no run started the budget afresh


def test_any_sum_of_the_floors_shares_carries_the_full_noise() -> None:
    """floor - colluders honest shares have standard deviation noise * clip together: the colluders' own shares,
    which they could subtract, are not counted on."""
    s, rng = settings(noise=1.5, clip=0.5, floor=5, colluders=2), SecureRandom.from_os()
    honest = sum(noised_update(np.zeros(20000), s, rng) for _ in range(s.floor - s.colluders))
    assert abs(float(np.std(honest)) / (s.noise * s.clip) - 1) < 0.03
    big = np.full(100, 1.0)
    clipped, within = clip_update(big, 0.3)
    assert not within and math.isclose(float(np.linalg.norm(clipped)), 0.3)


def test_adaptive_clipping_sends_the_unclipped_bit_under_its_own_noise_and_keeps_the_total_noise() -> None:
    """Andrew et al.'s split: the update noise z_Delta and the count noise sigma_b compose to the accounted z; the
    honest shares of the bits add up to the count plus noise of std sigma_b; the clip moves toward the quantile."""
    from privacy.user_dp import next_clip

    s, rng = settings(noise=1.5, clip=0.5, floor=9, colluders=1, count_noise=4.0), SecureRandom.from_os()
    assert math.isclose(s.update_noise ** -2 + (2 * s.count_noise) ** -2, s.noise ** -2)
    assert s.update_noise > s.noise  # the updates carry a little more noise, the count the rest
    bits = [noised_update(np.full(100, 0.01), s, rng)[-1] for _ in range(4000)]  # well inside the clip: bit 1
    assert abs(np.mean(bits) - 1) < 0.05 and abs(np.std(bits) / s.count_share_std - 1) < 0.05
    assert math.isclose(s.count_share_std * math.sqrt(s.floor - s.colluders), s.count_noise)
    clipped = noised_update(np.full(100, 1.0), s, rng)
    assert clipped.size == 101 and abs(clipped[-1]) < 6 * s.count_share_std  # clipped: bit 0
    assert noised_update(np.full(100, 1.0), settings(), rng).size == 100  # a fixed clip sends no bit
    assert next_clip(0.3, 0.9, 0.5, 0.2) < 0.3 < next_clip(0.3, 0.1, 0.5, 0.2)  # too few clipped: tighten
    with pytest.raises(DPConfigError, match="half the noise"):
        settings(noise=2.0, count_noise=0.9)


def test_the_device_decides_its_participation_noise_share_and_floor_the_run_may_only_tighten() -> None:
    policy = PrivacyPolicy(max_epsilon=3.0, max_delta=1e-5, min_clip=0.1, max_clip=1.0, min_contributors=6,
                           max_participation=0.05, assumed_colluders=2, min_noise_multiplier=1.2)
    kw = dict(he=True, clip=0.3, noise=None, delta=1e-5, target_epsilon=3.0, accountant="rdp", rounds=100)
    admitted = policy.admit_user(participation=0.5, min_contributors=3, **kw)
    assert admitted.participation == 0.05 and admitted.floor == 6 and admitted.colluders == 2
    assert admitted.noise >= 1.2 and math.isclose(admitted.share_std, admitted.noise * 0.3 / 2)
    assert policy.admit_user(participation=0.01, min_contributors=10, **kw).floor == 10  # the run tightens
    for change, code in ((dict(he=False), "he-required"), (dict(delta=1e-3), "delta"), (dict(clip=5.0), "clip"),
                         (dict(target_epsilon=8.0), "epsilon")):
        with pytest.raises(PolicyRefusal, match=code):
            policy.admit_user(participation=0.1, min_contributors=3, **{**kw, **change})
    with pytest.raises(DPConfigError, match="colluders"):
        settings(floor=3, colluders=3)


def test_calibrated_noise_spends_the_budget_over_the_planned_rounds() -> None:
    sigma = calibrate_user_noise(3.0, 1e-5, 0.1, 100)
    spend = PrivacySpend()
    for _ in range(100):
        spend = spend.after(sigma, 0.1, 1)
    assert 2.9 < spend.epsilon(1e-5) <= 3.01


@pytest.mark.slow
def test_a_user_level_round_runs_with_threshold_he_each_device_weighing_one(tmp_path) -> None:
    """Devices sample themselves, clip, add their noise shares and encrypt with weight 1, and the bit whether they
    needed clipping (adaptive clipping); the key holders decrypt the sum of those that took part, the co-signers
    agree on the model from its model values, and the count moves the next round's clip; the run goes on through
    rounds nobody (or too few) took part in."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--task", "breast-cancer", "--clients", "6", "--rounds", "3",
         "--no-ledger", "--run-dir", str(tmp_path), "--run-id", "u", "--batch-size", "32", "--lr", "0.5",
         "--delta", "1e-3", "--target-epsilon", "50", "-c", "privacy=user", "-c", "participation=0.8", "-c", "update-clip=0.5",
         "-c", "user-noise=0.5", "-c", "clip-quantile=0.5"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "u" / "run.json").read_text())
    assert doc["summary"]["rounds_completed"] == 3
    rows = [json.loads(line) for line in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if not r["failed"]]
    assert trained, rows  # q = 0.8 of 6 devices: at least one round held the floor of 3
    assert rows[0]["update_clip"] == 0.5 and all(r["unclipped_share"] is not None for r in trained)
    for before, after in zip(rows, rows[1:]):  # a round with a count moves the next round's clip, and only such
        assert (after["update_clip"] != before["update_clip"]) == (before["unclipped_share"] is not None)
    bundle = json.loads((tmp_path / "u" / "ledger" / f"round-{trained[0]['round']}.json").read_text())
    assert bundle["updates"] and all(u["num_examples"] == 1 for u in bundle["updates"])
    eps = doc["summary"]["epsilon_by_client"]
    assert len(eps) == 6 and all(e > 0 for e in eps.values())  # every device asked spent, taking part or not


@pytest.mark.slow
def test_a_fleet_of_1000_simulated_devices_completes_a_round_with_a_drawn_committee(tmp_path) -> None:
    """1,000 devices, every one asked, each taking part with q = 0.1: a committee of 28 drawn by all of them holds
    the key, the others join it, about a hundred contribute, and the round's sum is decrypted and co-signed."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--clients", "1000", "--fraction", "1.0", "--rounds", "1",
         "--no-ledger", "--run-dir", str(tmp_path), "--run-id", "fleet", "-c", "privacy=user",
         "-c", "min-contributors=50", "-c", "server-lr=3"],
        capture_output=True, text=True, timeout=1500, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "fleet" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and not rows[0]["failed"] and 50 <= rows[0]["train_clients"] <= 160, rows
    (key,) = [json.loads(p.read_text()) for p in (tmp_path / "fleet" / "keys").glob("*.json") if len(p.stem) == 64]
    assert len(key["holders"]) == 28 and key["threshold"] == 15 and key["committee"]["candidates"] == 1000
    assert len(key["draw"]["candidates"]) == 1000 and key["committee"]["colluders"] == 100


def test_a_device_checks_in_once_per_round_and_a_train_message_gets_the_same_answer(tmp_path) -> None:
    """The check-in keeps the coin and the accountant step; a train message for the same round re-rolls nothing,
    so a server cannot send the model to a device that said no and have it train, nor ask twice for a new coin."""
    from flwr.app import ArrayRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import fl_client.client_app as app
    from fedproof.core.config import ClientSettings, RunConfig
    from fedproof.core.keys import init_key_set
    from fedproof.core.protocol import ARRAYS_KEY, CONFIG_KEY, SAMPLED, ClientReport, round_settings
    from fedproof.core.task import load_task

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    keys = init_key_set(tmp_path / "keys", [str(i) for i in range(40)])
    config = RunConfig(clients=40, privacy="user", participation=0.5, run_dir=str(tmp_path), run_id="checkin",
                       key_set=str(keys.directory), ledger=False, he_weight_scale=40, min_contributors=3,
                       user_noise=4.0, partition="iid")
    sent = ClientSettings.of(config, True, {}).to_record()
    parent = ArrayRecord(load_task(config.task).model(config.model, 10, seed=1).state_dict())
    answers = {}
    for i in range(40):
        context = Context(run_id=1, node_id=i + 1, node_config={"partition-id": i, "num-partitions": 40},
                          state=RecordDict(), run_config={})
        ask = Message(RecordDict({CONFIG_KEY: round_settings(sent, 1)}), dst_node_id=i + 1,
                      message_type="query.check_in")
        first = ClientReport.from_reply(app.check_in(ask, context).content)
        again = ClientReport.from_reply(app.check_in(ask, context).content)
        assert first.status == again.status and first.epsilon == again.epsilon  # nothing re-rolled, nothing spent
        answers[i] = first.status
        # a decline names the round the device's coins say it takes part in next (0: none left in the run)
        assert first.status == SAMPLED or first.next_round == 0 or 1 < first.next_round <= config.rounds
        if first.status != SAMPLED:  # the model sent anyway: the device declines, untrained
            train = Message(RecordDict({ARRAYS_KEY: parent, CONFIG_KEY: round_settings(sent, 1)}),
                            dst_node_id=i + 1, message_type="train")
            report = ClientReport.from_reply(app.train(train, context).content)
            assert report.status == first.status and report.epsilon == first.epsilon
    assert 5 <= sum(s == SAMPLED for s in answers.values()) <= 35, answers  # q = 0.5 of 40


def test_the_server_asks_a_device_when_it_is_due_and_asks_those_it_knows_nothing_of_to_check_in() -> None:
    from fl_server.round import split_by_schedule

    schedule = {1: 3, 2: 5, 3: 0, 4: 2}  # node 4's round passed without it (offline): it checks in again
    due, unknown = split_by_schedule([1, 2, 3, 4, 5], schedule, 3)
    assert due == [1] and unknown == [4, 5]  # 2 is due later, 3 takes no part in this run: neither is asked
