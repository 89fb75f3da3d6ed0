"""The decryption committee: k of a round's contributors decrypt the encrypted sum, and must agree.

Members are drawn at random (seeded by run and round) from the clients whose updates are in the sum. A member
that fails, does not answer, or sends an unsigned, forged or malformed reply is replaced by another
contributor until k valid answers are in, or nobody is left. Answers that differ by more than the CKKS
release tolerance void the round. The outcome is a value: the agreed sum, or why there is none.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedproof.protocol import CONFIG_KEY, DECRYPT, EncryptedPayload, round_settings
from fedproof.replies import Decryption, Reason, Rejection, decode_decrypt_reply
from fl_server.admission import Admission
from fl_server.exchange import exchange
from privacy.he import HEParams, release_tolerance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitteeOutcome:
    values: np.ndarray | None
    """The agreed decrypted sum; None when the round is void."""
    failure: str = ""
    rejections: tuple[Rejection, ...] = ()
    """Committee replies set aside (their senders were replaced)."""


@dataclass(frozen=True)
class Committee:
    size: int
    seed: int
    timeout: float
    params: HEParams
    """The run's CKKS scheme: it sets how far honest members' answers may differ."""

    def decrypt(self, grid: Grid, admission: Admission, server_round: int, settings: Mapping,
                summed: EncryptedPayload, contributors: list[int]) -> CommitteeOutcome:
        pool = sorted(contributors)
        random.Random(f"committee/{self.seed}/{server_round}").shuffle(pool)
        wanted = min(self.size, len(pool))
        answers: dict[int, np.ndarray] = {}
        rejected: list[Rejection] = []
        config = round_settings(settings, server_round)
        while len(answers) < wanted:
            missing = wanted - len(answers)
            if len(pool) < missing:
                problems = "; ".join(str(r) for r in rejected) or "no answer"
                return CommitteeOutcome(None, f"round {server_round}: only {len(answers)} of {wanted} committee "
                                              f"members decrypted the sum ({problems})", tuple(rejected))
            asked, pool = pool[:missing], pool[missing:]
            messages = [Message(summed.put(RecordDict({CONFIG_KEY: config})), dst_node_id=node,
                                message_type=DECRYPT, group_id=str(server_round)) for node in asked]
            replies, missing = exchange(grid, messages, self.timeout, "decrypt")
            outcomes = [decode_decrypt_reply(reply, summed.num_values) for reply in replies] + missing
            for outcome in outcomes:
                if isinstance(outcome, Decryption):
                    outcome = admission.check_decryption(server_round, outcome) or outcome
                if isinstance(outcome, Rejection):
                    log.warning("round %s: committee member replaced: %s", server_round, outcome)
                    rejected.append(outcome)
                else:
                    answers[outcome.node_id] = outcome.values
        return _agreed(answers, release_tolerance(self.params, summed.num_summed), server_round, tuple(rejected))


def _agreed(answers: dict[int, np.ndarray], tolerance: float, server_round: int,
            rejected: tuple[Rejection, ...]) -> CommitteeOutcome:
    nodes = sorted(answers)
    if not nodes:
        return CommitteeOutcome(None, f"round {server_round}: no committee member could be asked", rejected)
    first = answers[nodes[0]]
    for node in nodes[1:]:
        gap = float(np.abs(answers[node] - first).max())
        if gap > tolerance:
            return CommitteeOutcome(None, f"round {server_round}: committee members {nodes[0]} and {node} decrypted "
                                          f"sums differing by {gap:.3g} > tolerance {tolerance:.3g}; the round is "
                                          "void and the model unchanged", rejected)
    return CommitteeOutcome(first, "", rejected)
