"""Releases: promotion (with a canary share), rollback and retirement as operator-signed statements on chain.

The fast tests play the statements, the contract and the operator's checks on an in-process chain with made-up
artifacts; the slow one runs two devices against a real anvil with real artifacts and plays the attacker who
holds the ledger account: a forged statement, a replayed one, one signed for another chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fl_server.deploy import sign_manifest
from fl_server.release import ReleaseRefused, history, release, stage_of
from ledger.contract import LedgerContract, RoundRecord
from ledger.errors import LedgerTxFailed, LedgerValueError
from ledger.manifest import DeploymentKey, Derivation
from ledger.release import (
    ALL,
    ZERO,
    Action,
    ReleaseError,
    ReleaseStatement,
    SignedRelease,
    in_canary,
    latest,
    retired,
    stages,
    target,
)

OPERATOR = DeploymentKey.generate()


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


A, B, C = h("artifact-a"), h("artifact-b"), h("artifact-c")


def statement(chain: LedgerContract, sequence: int, action: Action, channel: str, artifact: bytes,
              previous: bytes = ZERO, canary_bp: int = ALL) -> ReleaseStatement:
    return ReleaseStatement(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), sequence, action,
                            channel, artifact, previous, canary_bp)


@pytest.fixture()
def chain() -> LedgerContract:
    return LedgerContract.deploy(LedgerContract.in_memory())


@pytest.fixture()
def registry(chain: LedgerContract, tmp_path: Path) -> Path:
    """Artifacts A, B, C recorded on chain as deployments of a recorded model, each with a signed manifest."""
    chain.start_run(h("run"), h("init"))
    chain.record_round(RoundRecord(h("run"), 1, h("init"), h("model"), h("root"), 2, 1, h("bundle")))
    for artifact in (A, B, C):
        chain.record_deployment(h("model"), artifact, h("run"), 1, "test")
        sign_manifest(tmp_path, OPERATOR, chain, artifact, h("model"), "run", 1, "v",
                      Derivation("scatternet-10", True, h("calibration")))
    return tmp_path


def test_a_statement_signs_every_field_and_its_domain(chain: LedgerContract) -> None:
    base = statement(chain, 5, Action.PROMOTE, "production", A, B, 1000)
    changed = [dataclasses.replace(base, **{k: v}) for k, v in (
        ("chain_id", 1), ("genesis", b"\x01" * 32), ("contract", b"\x02" * 20), ("sequence", 6),
        ("channel", "staging"), ("artifact", C), ("previous", C), ("canary_bp", 1001))]
    changed.append(dataclasses.replace(base, action=Action.ROLLBACK, canary_bp=ALL))
    assert len({s.canonical_bytes() for s in [base, *changed]}) == len(changed) + 1
    signed = SignedRelease.signed_by(OPERATOR, base)
    domain = (chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]))
    assert signed.verify(OPERATOR.public_key, *domain) == base
    with pytest.raises(ReleaseError, match="not signed by the pinned operator key"):
        signed.verify(DeploymentKey.generate().public_key, *domain)
    with pytest.raises(ReleaseError, match="not the pinned one"):
        signed.verify(OPERATOR.public_key, chain.chain_id, b"\x01" * 32, domain[2])
    with pytest.raises(ReleaseError, match="not signed"):  # the same signature over another statement
        dataclasses.replace(signed, statement=changed[0]).verify(OPERATOR.public_key, 1, *domain[1:])
    for bad in ({"channel": "beta"}, {"canary_bp": 0}, {"canary_bp": ALL + 1}, {"artifact": ZERO},
                {"previous": A}, {"sequence": 0}, {"action": 7}, {"genesis": b"short"}):
        with pytest.raises(ReleaseError):
            dataclasses.replace(base, **bad)
    with pytest.raises(ReleaseError, match="only a promotion can be a canary"):
        statement(chain, 1, Action.ROLLBACK, "production", A, B, 5000)


def test_canary_membership_is_decided_by_device_id_per_artifact(chain: LedgerContract) -> None:
    devices = [f"device-{i}" for i in range(4000)]
    ten = statement(chain, 1, Action.PROMOTE, "production", A, B, 1000)
    fifty = dataclasses.replace(ten, canary_bp=5000)
    in_ten = {d for d in devices if in_canary(d, ten)}
    in_fifty = {d for d in devices if in_canary(d, fifty)}
    assert 0.08 < len(in_ten) / len(devices) < 0.12 and 0.46 < len(in_fifty) / len(devices) < 0.54
    assert in_ten <= in_fifty  # widening a canary keeps its first devices
    assert in_ten == {d for d in devices if in_canary(d, ten)}  # the same answer every time
    other = {d for d in devices if in_canary(d, dataclasses.replace(ten, artifact=C))}
    assert len(other & in_ten) < len(in_ten) / 2  # the next artifact's canary is another sample
    outside = next(d for d in devices if d not in in_ten)
    assert target(ten, outside) == B and target(ten, next(iter(in_ten))) == A


def test_stages_follow_promotion_canary_rollback_and_retirement(chain: LedgerContract) -> None:
    s = [statement(chain, 1, Action.PROMOTE, "staging", A),
         statement(chain, 2, Action.PROMOTE, "production", A),
         statement(chain, 3, Action.PROMOTE, "production", B, A, 2500)]
    assert stages(s) == {A: "production", B: "canary (25% of production)"}
    s.append(statement(chain, 4, Action.PROMOTE, "production", B, A))
    assert stages(s) == {A: "retired", B: "production"} and retired(s) == {A}
    s.append(statement(chain, 5, Action.ROLLBACK, "production", A, B))
    assert stages(s) == {A: "production", B: "retired"}
    assert latest(s, "production").sequence == 5 and latest(s, "staging").sequence == 1
    s.append(statement(chain, 6, Action.RETIRE, "*", B))
    assert retired(s) == {B}


def test_the_ledger_takes_only_deployed_artifacts_in_sequence_order(chain: LedgerContract, registry: Path) -> None:
    first = SignedRelease.signed_by(OPERATOR, statement(chain, 1, Action.PROMOTE, "production", A))
    chain.record_release(first)
    assert chain.latest_release_sequence() == 1
    with pytest.raises(LedgerTxFailed, match="replayed or out-of-order"):
        chain.record_release(first)  # the same signed statement again
    with pytest.raises(LedgerTxFailed, match="not the next one"):  # skipping ahead would block what follows
        chain.record_release(SignedRelease.signed_by(OPERATOR, statement(chain, 2**64 - 1, Action.PROMOTE, "production", B)))
    with pytest.raises(LedgerTxFailed, match="never recorded as a deployment"):
        chain.record_release(SignedRelease.signed_by(OPERATOR, statement(chain, 2, Action.PROMOTE, "production", h("nope"))))
    with pytest.raises(LedgerValueError, match="64 bytes"):
        chain.record_release(dataclasses.replace(first, signature=b"\x00" * 63))
    [event] = chain.release_events()
    assert (event.sequence, event.artifact_hash, event.channel, event.signature) == (1, A, "production",
                                                                                     first.signature)
    assert chain.release_events(channel="staging") == [] and chain.release_events(artifact_hash=B) == []
    assert len(chain.release_events(channel="production", artifact_hash=A)) == 1


def test_the_operator_signs_only_releases_that_make_sense(chain: LedgerContract, registry: Path) -> None:
    with pytest.raises(ReleaseRefused, match="never ran"):
        release(registry, OPERATOR, chain, Action.ROLLBACK, A)
    first = release(registry, OPERATOR, chain, Action.PROMOTE, A).release.statement
    assert (first.previous, first.canary_bp) == (ZERO, ALL) and first.sequence == 1
    canary = release(registry, OPERATOR, chain, Action.PROMOTE, B, canary_bp=1000).release.statement
    assert canary.previous == A  # what the devices outside the canary keep
    wider = release(registry, OPERATOR, chain, Action.PROMOTE, B, canary_bp=5000).release.statement
    assert wider.previous == A
    with pytest.raises(ReleaseRefused, match="still runs"):
        release(registry, OPERATOR, chain, Action.RETIRE, A)  # the devices outside the canary run it
    with pytest.raises(ReleaseRefused, match="to end the canary, roll back"):
        release(registry, OPERATOR, chain, Action.PROMOTE, A)
    with pytest.raises(ReleaseRefused, match="already released so"):
        release(registry, OPERATOR, chain, Action.PROMOTE, B, canary_bp=5000)
    with pytest.raises(ReleaseRefused, match="on a canary: promote it"):
        release(registry, OPERATOR, chain, Action.ROLLBACK, B)
    with pytest.raises(ReleaseRefused, match="never ran"):
        release(registry, OPERATOR, chain, Action.ROLLBACK, C)
    back = release(registry, OPERATOR, chain, Action.ROLLBACK, A).release.statement
    assert (back.artifact, back.previous) == (A, B)
    assert stage_of(chain, OPERATOR.public_key) == {A: "production", B: "retired"}
    release(registry, OPERATOR, chain, Action.PROMOTE, C, channel="staging")
    with pytest.raises(ReleaseRefused, match="no manifest signed by this operator"):
        release(registry, DeploymentKey.generate(), chain, Action.PROMOTE, C)
    (registry / f"{C.hex()}.manifest.json").unlink()
    with pytest.raises(ReleaseRefused, match="deploy it first"):
        release(registry, OPERATOR, chain, Action.PROMOTE, C)
    sequences = [e.sequence for e in chain.release_events()]
    assert sequences == [1, 2, 3, 4, 5]


def test_a_statement_the_operator_did_not_sign_is_reported_and_never_counted(chain: LedgerContract,
                                                                            registry: Path) -> None:
    """The ledger account (the server's) records a statement signed by another key, and one the operator signed
    for another chain: the contract takes both (it cannot check Ed25519), every reader ignores them."""
    release(registry, OPERATOR, chain, Action.PROMOTE, A)
    chain.record_release(SignedRelease.signed_by(DeploymentKey.generate(), statement(chain, 2, Action.PROMOTE, "production", B)))
    elsewhere = dataclasses.replace(statement(chain, 3, Action.PROMOTE, "production", B), genesis=b"\x07" * 32)
    chain.record_release(SignedRelease.signed_by(OPERATOR, elsewhere))
    paired, ignored = history(chain, OPERATOR.public_key)
    assert [s.artifact for _, s in paired] == [A] and len(ignored) == 2
    assert all("not signed by the pinned operator key" in reason for reason in ignored)
    assert stage_of(chain, OPERATOR.public_key) == {A: "production"}


# --------------------------------------------------------------------------------------------- end to end


def _cli(*args: str) -> dict | str:
    from typer.testing import CliRunner

    from fedproof.cli.main import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


@pytest.mark.slow  # anvil, two exports and quantizations of the scattering graph (~20 s)
def test_promote_canary_rollback_and_forged_releases_end_to_end_on_anvil(devnet, synthetic_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an MLflow client reading a registry opens ./mlflow.db as its default store
    from fedproof.core.data import load_dataset
    from fl_client.edge import ArtifactRejected, classify, follow, pull
    from fl_server.deploy import DeploySettings, deploy
    from fl_server.tracking import REGISTERED_MODEL
    from ledger.operator import OperatorKeys, use_account
    from ledger.signing import SigningKey
    from ledger.trust import LedgerTrust
    from rounds import record_trained_run

    operator_dir, password = tmp_path / "operator", tmp_path / "password"
    password.write_text("a long password\n")
    operator = OperatorKeys.create(operator_dir, b"a long password")
    key, account = operator.deployment_key(b"a long password"), operator.ledger_account(b"a long password")
    w3 = LedgerContract.connect(devnet.url)  # the operator's keystore deploys and writes, as `server start` does
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**21)])
    use_account(w3, account)
    chain = LedgerContract.deploy(w3, sender=account.address)
    data = load_dataset(synthetic_dir)
    record_trained_run(chain, tmp_path / "run", data, {c: SigningKey.generate() for c in ("a", "b")})
    registry = tmp_path / "registry"
    a = deploy(tmp_path / "run", data, registry, chain, key=key).artifact_sha256
    b = deploy(tmp_path / "run", data, registry, chain, settings=DeploySettings(per_channel=False),
               key=key).artifact_sha256
    assert a != b
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), key.public_key,
                        (devnet.url,))
    (tmp_path / "trust.json").write_text(trust.to_json())
    ledger = ("--ledger-url", devnet.url, "--contract", chain.address)
    signer = ("--registry", str(registry), "--operator", str(operator_dir), "--password-file", str(password),
              "--tracking-uri", (tmp_path / "mlruns").as_uri(), *ledger)
    half = dataclasses.replace(statement(chain, 1, Action.PROMOTE, "production", bytes.fromhex(b), bytes(32)),
                               canary_bp=5000)
    ids = [f"device-{i}" for i in range(64)]
    inside = next(d for d in ids if in_canary(d, half))
    outside = next(d for d in ids if not in_canary(d, half))

    def device(name: str) -> dict:
        out = _cli("edge", "follow", "--channel", "production", "--device-id", name, "--registry", str(registry),
                   "--install-dir", str(tmp_path / name), "--trust", str(tmp_path / "trust.json"))
        current = json.loads((tmp_path / name / "current.json").read_text())
        return {"runs": current["artifact_sha256"], "output": out}

    _cli("release", "promote", a, *signer)
    assert [device(d)["runs"] for d in (inside, outside)] == [a, a]
    _cli("release", "promote", b, "--canary", "50", *signer)
    assert [device(d)["runs"] for d in (inside, outside)] == [b, a]  # only the canary's devices switch
    _cli("release", "promote", b, *signer)
    assert [device(d)["runs"] for d in (inside, outside)] == [b, b]
    assert classify(tmp_path / inside, data.test_x[:8]).shape == (8,)

    # a rollback is a switch to the copy each device kept: the registry's copy is not needed any more
    shutil.move(registry / f"{a}.onnx", tmp_path / "a.onnx")
    _cli("release", "rollback", a, *signer)
    after = [device(d) for d in (inside, outside)]
    assert [d["runs"] for d in after] == [a, a] and all("switched back" in d["output"] for d in after)
    shutil.move(tmp_path / "a.onnx", registry / f"{a}.onnx")

    # the ledger account records a forged statement, then replays a genuine one: no device moves
    chain.record_release(SignedRelease.signed_by(DeploymentKey.generate(), 
        statement(chain, chain.latest_release_sequence() + 1, Action.PROMOTE, "production", bytes.fromhex(b))))
    genuine = history(chain, key.public_key)[0][2][0]  # the promotion of b to every device
    replayed = genuine.signed(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]))
    with pytest.raises(LedgerTxFailed, match="replayed"):
        chain.record_release(replayed)
    elsewhere = SignedRelease.signed_by(OPERATOR, dataclasses.replace(
        statement(chain, chain.latest_release_sequence() + 1, Action.PROMOTE, "production", bytes.fromhex(b)),
        genesis=b"\x09" * 32))
    chain.record_release(elsewhere)  # not even the pinned key, nor this chain
    for name in (inside, outside):
        result = follow("production", registry, tmp_path / name, trust, [chain])
        assert result.installed.artifact_sha256 == a and not result.changed and len(result.ignored) == 2
    with pytest.raises(ArtifactRejected, match="follows the 'production' channel"):
        pull(b, registry, tmp_path / inside, trust, [chain])
    with pytest.raises(ArtifactRejected, match="follows the 'production' channel"):
        follow("staging", registry, tmp_path / inside, trust, [chain])

    # the release history, as anyone with the pin reads it, and MLflow's registry as its mirror
    audit = _cli("audit", "releases", a, "--trust", str(tmp_path / "trust.json"), *ledger, "--json")
    assert [(r["action"], r["artifact"][:8], r["canary_percent"]) for r in audit["releases"]] == [
        ("promote", a[:8], 100), ("promote", b[:8], 50), ("promote", b[:8], 100), ("rollback", a[:8], 100)]
    assert {r["stage_now"] for r in audit["releases"] if r["artifact"] == a} == {"production"}
    assert len(audit["ignored"]) == 2
    from mlflow.tracking import MlflowClient

    mirror = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri(), registry_uri=(tmp_path / "mlruns").as_uri())
    production = mirror.get_model_version_by_alias(REGISTERED_MODEL, "production")
    assert production.tags == {"fedproof.artifact_sha256": a, "fedproof.stage": "production"}
    assert set(mirror.get_registered_model(REGISTERED_MODEL).aliases) == {"production"}


class Lying:
    """An RPC endpoint that reports the release records altered by ``change``."""

    def __init__(self, chain: LedgerContract, **change) -> None:
        self.chain, self.change = chain, change

    def __getattr__(self, name):
        return getattr(self.chain, name)

    def release_events(self, **kw):
        return [dataclasses.replace(e, **self.change) for e in self.chain.release_events(**kw)]


def test_a_device_acts_on_no_record_its_endpoints_disagree_on_or_it_cannot_verify(chain: LedgerContract,
                                                                                  registry: Path,
                                                                                  tmp_path: Path) -> None:
    from fl_client.edge import ArtifactRejected, follow
    from ledger.trust import LedgerTrust

    release(registry, OPERATOR, chain, Action.PROMOTE, A)
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), OPERATOR.public_key)
    device = tmp_path / "device"
    with pytest.raises(ArtifactRejected, match="disagree"):
        follow("production", registry, device, trust, [chain, Lying(chain, tx_hash="0x" + "00" * 32)])
    assert not device.exists()
    for change in ({"action": 9}, {"channel": "x" * 70}, {"artifact_hash": B}, {"signature": b"\x00" * 64},
                   {"canary_bp": 1}):
        result = follow("production", registry, device, trust, [Lying(chain, **change)])
        assert result.installed is None and result.statement is None and len(result.ignored) == 1, change
