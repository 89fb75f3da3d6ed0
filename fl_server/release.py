"""Releases, on the operator's side: promote a deployed artifact on a channel (to a canary share of its devices or
to all), roll a channel back to an artifact it ran before, retire an artifact; each as a statement signed with the
deployment key and recorded on chain (:mod:`ledger.release` says what devices do with them).

The checks here keep an operator from signing nonsense (releasing an artifact the ledger never saw as a deployment,
rolling back to something the channel never ran, retiring what a channel runs); the devices do not rely on them.
A statement's sequence number is the chain's next one (the contract takes 1, 2, 3, ... in order only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedproof.base.errors import FedproofError
from fl_server.deploy import manifest_path
from ledger.contract import LedgerContract, Receipt, ReleaseEvent
from ledger.manifest import DeploymentKey, ManifestError, SignedManifest
from ledger.release import (
    ALL,
    EVERY_CHANNEL,
    ZERO,
    Action,
    ReleaseError,
    ReleaseStatement,
    SignedRelease,
    latest,
    stages,
    verified,
)


class ReleaseRefused(FedproofError):
    """The operator asked for a release that makes no sense on the current record: nothing was signed."""


@dataclass(frozen=True)
class Released:
    release: SignedRelease
    receipt: Receipt


def history(contract: LedgerContract, operator_key: bytes) -> tuple[list[tuple[ReleaseEvent, ReleaseStatement]],
                                                                  list[str]]:
    """Every release recorded on ``contract``, each with its statement when ``operator_key`` signed it, and what
    was ignored (records the key did not sign)."""
    return verified(contract.release_events(), operator_key, *contract.domain)


def _stable(statement: ReleaseStatement | None) -> bytes:
    """What every device of the channel runs under ``statement`` (a canary's devices outside it: the previous)."""
    if statement is None:
        return ZERO
    return statement.previous if statement.canary_bp < ALL else statement.artifact


def release(registry: Path, key: DeploymentKey, contract: LedgerContract, action: Action, artifact: bytes,
            channel: str = "production", canary_bp: int = ALL) -> Released:
    """Sign and record one release statement, after checking it against what the chain already says."""
    try:
        SignedManifest.load(manifest_path(registry, artifact)).verify(key.public_key)
    except ManifestError as exc:
        raise ReleaseRefused(f"{artifact.hex()[:16]}… has no manifest signed by this operator in {registry}: "
                             f"deploy it first ({exc})") from exc
    if not contract.is_deployed(artifact):
        raise ReleaseRefused(f"{artifact.hex()[:16]}… is not recorded as a deployment on the ledger")
    statements = [s for _, s in history(contract, key.public_key)[0]]
    now = latest(statements, channel)
    previous = ZERO
    if action is Action.PROMOTE:
        previous = _stable(now)
        if previous == artifact:
            raise ReleaseRefused(f"{artifact.hex()[:16]}… already runs on {channel}" + (
                ": to end the canary, roll back to it" if now is not None and now.canary_bp < ALL else ""))
        if now is not None and now.artifact == artifact and now.canary_bp == canary_bp:
            raise ReleaseRefused(f"{artifact.hex()[:16]}… is already released so on {channel}")
    elif action is Action.ROLLBACK:
        ran = {a for s in statements if s.channel == channel for a in (s.artifact, s.previous)} - {ZERO}
        if now is None or artifact not in ran:
            raise ReleaseRefused(f"{channel} never ran {artifact.hex()[:16]}…: a rollback goes back to an earlier "
                                 "release of the channel")
        if now.artifact == artifact:
            raise ReleaseRefused(f"{channel} already runs {artifact.hex()[:16]}…" + (
                " on a canary: promote it to give it to every device" if now.canary_bp < ALL else ""))
        previous = now.artifact
    else:
        channel = EVERY_CHANNEL
        running = {a for c in {s.channel for s in statements} if (s := latest(statements, c)) is not None
                   for a in (s.artifact, s.previous)}
        if artifact in running:
            raise ReleaseRefused(f"{artifact.hex()[:16]}… still runs on a channel: promote or roll back another "
                                 "artifact there first")
    sequence = contract.latest_release_sequence() + 1
    try:
        statement = ReleaseStatement(*contract.domain, sequence, action, channel, artifact, previous, canary_bp)
    except ReleaseError as exc:
        raise ReleaseRefused(str(exc)) from exc
    signed = SignedRelease.signed_by(key, statement)
    return Released(signed, contract.record_release(signed))


def stage_of(contract: LedgerContract, operator_key: bytes) -> dict[bytes, str]:
    """Each released artifact's stage, from the operator's statements on chain."""
    return stages([s for _, s in history(contract, operator_key)[0]])
