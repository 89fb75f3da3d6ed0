"""Deployment: export + static int8 + accuracy gate + registry + ledger + signed manifest; the edge installs only what
the operator signed, the pinned chain records and the co-signed lineage verifies, and never an older release."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from safetensors.torch import save as safetensors_save

from fedproof.core.artifact import calibration_bytes, derive
from fedproof.core.data import load_dataset
from fedproof.base.errors import FedproofError
from fedproof.core.model import count_parameters, make_model
from fedproof.core.features import to_tensors

from fl_client.edge import ArtifactRejected, classify, pull
from fl_server.deploy import (
    AccuracyDropTooLarge,
    DeployError,
    DeploySettings,
    deploy,
    manifest_path,
    rollback,
)
from ledger.contract import LedgerContract
from ledger.errors import NotOwner
from ledger.manifest import DeploymentKey, Derivation, SignedManifest
from ledger.signing import SigningKey
from ledger.trust import LedgerTrust
from rounds import record_trained_run

CLIENTS = {c: SigningKey.generate() for c in ("a", "b")}
OPERATOR = DeploymentKey.generate()
DERIVATION = Derivation("scatternet-10", True, bytes(32))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recorded_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A run of one recorded round whose model is a trained one, on an in-process chain."""
    data = load_dataset(synthetic_dir)
    chain = LedgerContract.deploy(LedgerContract.in_memory())
    run_path = tmp_path_factory.mktemp("run") / "r"
    return run_path, data, chain, record_trained_run(chain, run_path, data, CLIENTS)


@pytest.fixture(scope="module")
def published(recorded_run, tmp_path_factory: pytest.TempPathFactory):
    """One deployment of the recorded run (quantizing and scoring it is the slow part), shared by the tests."""
    run_path, data, chain, _ = recorded_run
    registry = tmp_path_factory.mktemp("published") / "registry"
    return deploy(run_path, data, registry, chain, key=OPERATOR), registry


def fresh_copy(published, tmp_path: Path):
    """The shared deployment in this test's own registry (a test may damage its copy)."""
    import shutil

    deployment, registry = published
    shutil.copytree(registry, tmp_path / "registry")
    return dataclasses.replace(deployment, artifact=str(tmp_path / "registry" / Path(deployment.artifact).name))


def pin(chain: LedgerContract, key: DeploymentKey = OPERATOR, **changes) -> LedgerTrust:
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), key.public_key)
    return dataclasses.replace(trust, **changes)


def install(ref: str, tmp_path: Path, chain: LedgerContract, trust: LedgerTrust | None = None, endpoints=None):
    return pull(ref, tmp_path / "registry", tmp_path / "device", trust or pin(chain), endpoints or [chain])


def test_deploy_pull_predict_round_trip_agrees_with_fp32(recorded_run, published, tmp_path: Path) -> None:
    run_path, data, chain, model = recorded_run
    deployment = fresh_copy(published, tmp_path)
    # the learned weights went from 4 bytes to 1 (the scattering's fixed Fourier matrices stay float)
    assert deployment.fp32_bytes - deployment.int8_bytes >= 0.9 * 3 * count_parameters(model)
    assert deployment.fp32_accuracy - deployment.int8_accuracy <= 0.01
    manifest = json.loads((tmp_path / "registry" / f"{deployment.artifact_sha256}.json").read_text())
    assert manifest["source_model_sha256"] == deployment.source_model_sha256 and manifest["round"] == 1
    installed = install("latest", tmp_path, chain)
    assert installed.artifact_sha256 == deployment.artifact_sha256
    with torch.no_grad():
        expected = model(to_tensors(data.test_x, data.test_y)[0]).argmax(1).numpy()
    agreement = float((classify(tmp_path / "device", data.test_x) == expected).mean())
    assert agreement >= 0.99


def test_a_model_not_on_the_ledger_is_not_deployed(recorded_run, tmp_path: Path) -> None:
    run_path, data, chain, _ = recorded_run
    other = LedgerContract.deploy(LedgerContract.in_memory())  # a ledger that never saw this run
    with pytest.raises(DeployError, match="not recorded on the ledger"):
        deploy(run_path, data, tmp_path / "registry", other)
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").iterdir())


@pytest.mark.slow  # a second export and quantization of the scattering graph (~8 s)
def test_too_large_an_accuracy_drop_publishes_nothing(recorded_run, tmp_path: Path) -> None:
    run_path, data, chain, _ = recorded_run
    with pytest.raises(AccuracyDropTooLarge, match="pp below fp32"):
        deploy(run_path, data, tmp_path / "registry", chain, settings=DeploySettings(max_drop_pp=-100.0))
    assert not list((tmp_path / "registry").glob("*.onnx")) if (tmp_path / "registry").exists() else True


def test_tampered_and_unknown_artifacts_are_refused_and_nothing_is_installed(recorded_run, published,
                                                                            tmp_path: Path) -> None:
    run_path, data, chain, model = recorded_run
    deployment = fresh_copy(published, tmp_path)
    artifact = Path(deployment.artifact)
    good = artifact.read_bytes()
    artifact.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ArtifactRejected, match="does not hash to its name"):
        install(deployment.artifact_sha256, tmp_path, chain)
    artifact.write_bytes(good)
    unknown = derive("cnn-10", safetensors_save(make_model("cnn", data.num_classes).state_dict()),
                     calibration_bytes(data.train_x[:64]), True)[1]
    digest = hashlib.sha256(unknown).hexdigest()
    (tmp_path / "registry" / f"{digest}.onnx").write_bytes(unknown)  # valid ONNX, right name, never deployed
    with pytest.raises(ArtifactRejected, match="no signed manifest"):  # unsigned: nothing vouches for it
        install(digest, tmp_path, chain)
    signed = SignedManifest.load(manifest_path(tmp_path / "registry", bytes.fromhex(deployment.artifact_sha256)))
    forged = SignedManifest.signed_by(OPERATOR, dataclasses.replace(signed.manifest, artifact_sha256=bytes.fromhex(digest),
                                               sequence=99))  # the operator's key, but never recorded on chain
    (tmp_path / "registry" / f"{digest}.manifest.json").write_text(forged.to_json())
    with pytest.raises(ArtifactRejected, match="not recorded as a deployment"):
        install(digest, tmp_path, chain)
    with pytest.raises(ArtifactRejected, match="not an artifact hash"):
        install("abc", tmp_path, chain)
    assert not (tmp_path / "device").exists()
    install(deployment.artifact_sha256, tmp_path, chain)
    installed = tmp_path / "device" / f"{deployment.artifact_sha256}.onnx"
    installed.write_bytes(installed.read_bytes() + b"\0")  # altered on the device after install
    with pytest.raises(ArtifactRejected, match="altered after it was verified"):
        classify(tmp_path / "device", data.test_x[:4])


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_the_edge_path_never_imports_torch(recorded_run, published, tmp_path: Path, synthetic_dir: Path) -> None:
    run_path, data, chain, _ = recorded_run
    fresh_copy(published, tmp_path)
    install("latest", tmp_path, chain)
    np.save(tmp_path / "images.npy", data.test_x[:16])
    script = (
        "import sys\n"
        "from fedproof.cli.main import app\n"  # the whole CLI module, as `fedproof edge` loads it
        "from fl_client import edge\n"
        "import ledger.contract\n"
        f"labels = edge.classify(__import__('pathlib').Path({str(tmp_path / 'device')!r}), "
        f"edge.read_images(__import__('pathlib').Path({str(tmp_path / 'images.npy')!r})))\n"
        "assert len(labels) == 16\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bad_image_files_are_refused(tmp_path: Path) -> None:
    from fl_client.edge import read_images

    np.save(tmp_path / "floats.npy", np.zeros((2, 28, 28), np.float32))
    with pytest.raises(FedproofError, match="expected uint8"):
        read_images(tmp_path / "floats.npy")
    (tmp_path / "junk.idx").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(FedproofError):
        read_images(tmp_path / "junk.idx")


def test_a_device_installs_only_what_its_pinned_operator_chain_and_contract_vouch_for(recorded_run, published,
                                                                                    tmp_path) -> None:
    run_path, data, chain, _ = recorded_run
    deployment = fresh_copy(published, tmp_path)
    ref = deployment.artifact_sha256
    stranger = DeploymentKey.generate()
    with pytest.raises(ArtifactRejected, match="not the operator key this device pins"):
        install(ref, tmp_path, chain, pin(chain, stranger))  # a manifest signed by a foreign key
    path = manifest_path(tmp_path / "registry", bytes.fromhex(ref))
    honest = SignedManifest.load(path)
    path.write_text(SignedManifest.signed_by(stranger, honest.manifest).to_json())
    with pytest.raises(ArtifactRejected, match="not the operator key"):
        install(ref, tmp_path, chain)
    path.write_text(dataclasses.replace(honest, manifest=dataclasses.replace(honest.manifest, round=7)).to_json())
    with pytest.raises(ArtifactRejected, match="signature does not match"):
        install(ref, tmp_path, chain)
    path.write_text(honest.to_json())
    with pytest.raises(ArtifactRejected, match="for chain .* not the pinned one"):
        install(ref, tmp_path, chain, pin(chain, genesis=b"\x01" * 32))  # another devnet
    with pytest.raises(ArtifactRejected, match="not the pinned one"):
        install(ref, tmp_path, chain, pin(chain, contract=b"\x02" * 20))  # another contract
    with pytest.raises(ArtifactRejected, match="expired"):
        pull(ref, tmp_path / "registry", tmp_path / "device", pin(chain), [chain], now=honest.manifest.expires + 1)
    assert not (tmp_path / "device").exists()


def publish_unquantized(chain: LedgerContract, lin, tmp_path: Path) -> str:
    """The operator's release of ``lin``'s last model as an artifact of arbitrary bytes (the device refuses a model
    whose lineage does not verify before it ever loads the artifact): recorded, signed, bundles beside it."""
    import shutil

    from fl_server.deploy import sign_manifest
    from ledger.signing import run_id_hash

    artifact = b"an artifact of model " + lin.parent
    digest = hashlib.sha256(artifact).digest()
    registry = tmp_path / "registry"
    (registry / "bundles").mkdir(parents=True)
    (registry / f"{digest.hex()}.onnx").write_bytes(artifact)
    for path in lin.bundles.glob("round-*.json"):
        shutil.copyfile(path, registry / "bundles" / f"{lin.config.run_id}-{path.name}")
    chain.record_deployment(lin.parent, digest, run_id_hash(lin.config.run_id), lin.recorded, "edge")
    sign_manifest(registry, OPERATOR, chain, digest, lin.parent, lin.config.run_id, lin.recorded, "v", DERIVATION)
    return digest.hex()


@pytest.mark.parametrize("scenario", ["bundle_claims_2_of_2", "coalition_key", "a_co_signer_is_not_a_holder",
                                      "a_holder_did_not_sign_the_key", "malformed_key_bytes"])
def test_a_device_takes_t_and_the_key_holders_from_the_chain_only(recorded_run, tmp_path: Path,
                                                                 scenario: str) -> None:
    """Five registered clients; the server and accomplices d and e release a model of a run whose co-signers the
    run's key statement on chain does not vouch for (tests/key_scenarios.py): edge pull installs nothing."""
    from fedproof.core.config import RunConfig
    from fl_server.lineage import Lineage
    from fl_server.startup import register_clients
    from key_scenarios import REFUSED, model
    from ledger.verification import AllowList

    _, _, chain, _ = recorded_run
    snapshot = chain.w3.testing.snapshot()
    try:
        keys = {**CLIENTS, **{c: SigningKey.generate() for c in "cde"}}
        register_clients(chain, AllowList({c: k.public_key for c, k in keys.items()}))
        config = RunConfig(run_id=f"edge-{scenario}", chain_id=chain.chain_id, ledger_contract=chain.address,
                           chain_genesis="0x" + chain.genesis.hex())
        lin = Lineage(tmp_path / "run", config, chain, model(0.0))
        expected = REFUSED[scenario](lin, keys)
        ref = publish_unquantized(chain, lin, tmp_path)
        with pytest.raises(ArtifactRejected, match=f"does not verify: .*{expected}"):
            install(ref, tmp_path, chain)
        assert not (tmp_path / "device").exists()
    finally:
        chain.w3.testing.revert(snapshot)


def test_a_device_refuses_an_honest_lineage_only_for_the_artifact(recorded_run, tmp_path: Path) -> None:
    """The same path with an honest 3-of-5 run gets past the lineage check: what stops it is the artifact itself
    (not a model), so the refusals above are the key's."""
    from fedproof.core.config import RunConfig
    from fl_server.lineage import Lineage
    from fl_server.startup import register_clients
    from key_scenarios import honest, model
    from ledger.verification import AllowList

    _, _, chain, _ = recorded_run
    snapshot = chain.w3.testing.snapshot()
    try:
        keys = {**CLIENTS, **{c: SigningKey.generate() for c in "cde"}}
        register_clients(chain, AllowList({c: k.public_key for c, k in keys.items()}))
        config = RunConfig(run_id="edge-honest", chain_id=chain.chain_id, ledger_contract=chain.address,
                           chain_genesis="0x" + chain.genesis.hex())
        lin = Lineage(tmp_path / "run", config, chain, model(0.0))
        honest(lin, keys)
        with pytest.raises(ArtifactRejected, match="no source model"):  # past the lineage: the derivation's turn
            install(publish_unquantized(chain, lin, tmp_path), tmp_path, chain)
    finally:
        chain.w3.testing.revert(snapshot)


class Lying:
    """A second RPC endpoint that reports the deployment in another transaction."""

    def __init__(self, chain: LedgerContract) -> None:
        self.chain = chain

    def __getattr__(self, name):
        return getattr(self.chain, name)

    def deployment_events(self, **kw):
        return [dataclasses.replace(e, tx_hash="0x" + "00" * 32) for e in self.chain.deployment_events(**kw)]


def test_two_rpc_endpoints_that_disagree_install_nothing(recorded_run, published, tmp_path: Path) -> None:
    run_path, data, chain, _ = recorded_run
    deployment = fresh_copy(published, tmp_path)
    with pytest.raises(ArtifactRejected, match="disagree"):
        install(deployment.artifact_sha256, tmp_path, chain, endpoints=[chain, Lying(chain)])
    assert install(deployment.artifact_sha256, tmp_path, chain, endpoints=[chain, chain]).sequence == 1


@pytest.mark.slow  # a second export and quantization of the scattering graph (~8 s)
def test_a_rollback_needs_a_signed_rollback_statement(recorded_run, published, tmp_path: Path) -> None:
    run_path, data, chain, _ = recorded_run
    older = fresh_copy(published, tmp_path)
    newer = deploy(run_path, data, tmp_path / "registry", chain, settings=DeploySettings(per_channel=False),
                   key=OPERATOR)
    assert older.artifact_sha256 != newer.artifact_sha256
    assert install("latest", tmp_path, chain).artifact_sha256 == newer.artifact_sha256
    assert install("latest", tmp_path, chain).sequence == 2  # pulling what is installed changes nothing
    with pytest.raises(ArtifactRejected, match="rollback refused"):
        install(older.artifact_sha256, tmp_path, chain)  # a replayed older release
    rollback(tmp_path / "registry", OPERATOR, chain, bytes.fromhex(older.artifact_sha256))
    back = install(older.artifact_sha256, tmp_path, chain)
    assert back.artifact_sha256 == older.artifact_sha256 and back.sequence == 3


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_the_signed_drift_profile_is_installed_and_watches_what_the_device_sees(recorded_run, published,
                                                                                tmp_path: Path) -> None:
    """deploy publishes a drift profile whose hash the operator signs; a device installs it with the model, stays
    quiet on images like the calibration set, flags brighter ones and a missing class, and logs only aggregates."""
    from fl_client.edge import DRIFT_LOG, monitor

    _, data, chain, _ = recorded_run
    deployment = fresh_copy(published, tmp_path)
    profile = tmp_path / "registry" / f"{deployment.artifact_sha256}.profile.json"
    signed = SignedManifest.load(manifest_path(tmp_path / "registry", bytes.fromhex(deployment.artifact_sha256)))
    assert signed.manifest.profile_sha256 == hashlib.sha256(profile.read_bytes()).digest()
    good = profile.read_bytes()
    profile.write_bytes(good.replace(b"0.", b"1.", 1))  # a profile that would hide drift: not the one signed
    with pytest.raises(ArtifactRejected, match="drift profile"):
        install("latest", tmp_path, chain)
    assert not (tmp_path / "device").exists()
    profile.write_bytes(good)
    install("latest", tmp_path, chain)
    device, window = tmp_path / "device", data.test_x[:300]
    quiet = monitor(device, window, classify(device, window))
    assert not quiet.drift, quiet
    bright = np.clip(window.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    assert monitor(device, bright, classify(device, bright)).covariate_drift
    without = data.test_x[data.test_y != 0]  # a class the device no longer sees
    assert monitor(device, without, classify(device, without)).label_drift
    log = [json.loads(line) for line in (device / DRIFT_LOG).read_text().splitlines()]
    assert [e["drift"] for e in log] == [False, True, True]
    assert [e["window"] for e in log] == [len(window), len(bright), len(without)]
    assert set(log[0]) == {"time", "artifact", "window", "drift", "covariate_drift", "label_drift", "ks_p", "mmd",
                           "mmd_p", "labels_chi2", "labels_p", "alpha"}  # aggregates only, never an input
    installed = device / f"{deployment.artifact_sha256}.profile.json"
    installed.write_bytes(installed.read_bytes() + b" ")
    with pytest.raises(ArtifactRejected, match="altered"):
        monitor(device, window, classify(device, window))


# ------------------------------------------------------------------ the operator's key alone ships nothing of its own


def always_seven(artifact: bytes) -> bytes:
    """The honest artifact with one tensor changed, the last layer's class-7 bias: the same graph, answers 7."""
    model = onnx.load_from_string(artifact)
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    producers = {o: n for n in model.graph.node for o in n.output}
    name = producers[gemm.input[2]].input[0] if gemm.input[2] in producers else gemm.input[2]
    init = next(i for i in model.graph.initializer if i.name == name)
    values = numpy_helper.to_array(init).copy()
    values[7] += 2**24 if values.dtype.kind == "i" else 1e6
    init.CopyFrom(numpy_helper.from_array(values, name))
    return model.SerializeToString()


def constant_seven() -> bytes:
    """A graph of its own that takes the same images and answers 7 for every one."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "zero"], ["z"]),
             helper.make_node("Add", ["z", "seven"], ["logits"])]
    graph = helper.make_graph(
        nodes, "seven", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(np.array([2], np.int64), "axes"),
         numpy_helper.from_array(np.zeros((28, 10), np.float32), "zero"),
         numpy_helper.from_array(np.eye(10, dtype=np.float32)[7:8], "seven")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def ship(registry: Path, chain: LedgerContract, honest: SignedManifest, artifact: bytes) -> str:
    """What the operator (its deployment key, its ledger account) can do alone: publish ``artifact`` as a deployment
    of the honest artifact's co-signed model, recorded on chain, under a newer manifest with the same derivation."""
    from fl_server.deploy import TARGET, sign_manifest
    from ledger.signing import run_id_hash

    m = honest.manifest
    digest = hashlib.sha256(artifact).digest()
    (registry / f"{digest.hex()}.onnx").write_bytes(artifact)
    chain.record_deployment(m.source_model_sha256, digest, run_id_hash(m.run_id), m.round, TARGET)
    sign_manifest(registry, OPERATOR, chain, digest, m.source_model_sha256, m.run_id, m.round, "always-7",
                  m.derivation)
    return digest.hex()


@pytest.mark.slow  # a few seconds: `make test` and CI run it
@pytest.mark.parametrize("crafted", [always_seven, lambda _: constant_seven()], ids=["one-tensor", "own-graph"])
def test_an_artifact_that_always_answers_7_is_refused_by_pull_and_follow(recorded_run, published, tmp_path: Path,
                                                                         crafted) -> None:
    """The review's attack: the operator signs and records an artifact of the co-signed model that answers 7 to
    everything. The manifest, the chain record and the lineage all check out; the device's own derivation does not."""
    from fl_client.edge import follow
    from ledger.release import ALL, ZERO, Action, ReleaseStatement, SignedRelease

    _, data, chain, _ = recorded_run
    deployment = fresh_copy(published, tmp_path)
    registry = tmp_path / "registry"
    honest = SignedManifest.load(manifest_path(registry, bytes.fromhex(deployment.artifact_sha256)))
    seven = crafted(Path(deployment.artifact).read_bytes())
    from fedproof.core.inference import predict, session

    assert set(predict(session(seven), data.test_x).tolist()) == {7}  # the attack works where it is loaded
    ref = ship(registry, chain, honest, seven)
    with pytest.raises(ArtifactRejected, match="does not derive from its co-signed model"):
        install(ref, tmp_path, chain)
    with pytest.raises(ArtifactRejected, match="does not derive from its co-signed model"):
        install("latest", tmp_path, chain)
    assert not (tmp_path / "device").exists()

    snapshot = chain.w3.testing.snapshot()
    try:
        sequence = chain.latest_release_sequence() + 1
        chain.record_release(SignedRelease.signed_by(OPERATOR, ReleaseStatement(
            chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), sequence, Action.PROMOTE, "production",
            bytes.fromhex(ref), ZERO, ALL)))
        with pytest.raises(ArtifactRejected, match="does not derive from its co-signed model"):
            follow("production", registry, tmp_path / "follower", pin(chain), [chain], device_id="d1")
        assert not list((tmp_path / "follower").glob("*.onnx"))
    finally:
        chain.w3.testing.revert(snapshot)
    # the honest artifact of the same manifest chain still installs
    assert install(deployment.artifact_sha256, tmp_path, chain).artifact_sha256 == deployment.artifact_sha256


def test_the_derivation_inputs_are_checked_by_hash(recorded_run, published, tmp_path: Path) -> None:
    """The source model and the calibration images a device derives from are the ones the manifest names."""
    _, _, chain, _ = recorded_run
    deployment = fresh_copy(published, tmp_path)
    registry = tmp_path / "registry"
    source = registry / "models" / f"{deployment.source_model_sha256}.safetensors"
    good = source.read_bytes()
    source.write_bytes(good[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactRejected, match="not the co-signed one"):
        install(deployment.artifact_sha256, tmp_path, chain)
    source.write_bytes(good)
    calibration = next((registry / "calibration").glob("*.npy"))
    images = calibration.read_bytes()
    calibration.write_bytes(images[:-1] + bytes([images[-1] ^ 0xFF]))  # another image set: other ranges
    with pytest.raises(ArtifactRejected, match="calibration images .* not the ones its manifest names"):
        install(deployment.artifact_sha256, tmp_path, chain)
    calibration.write_bytes(images)
    assert not (tmp_path / "device").exists()
    assert install(deployment.artifact_sha256, tmp_path, chain).artifact_sha256 == deployment.artifact_sha256


def test_another_account_than_the_owner_is_refused_before_any_work(recorded_run, tmp_path: Path) -> None:
    """The operator's first day: deploying with an account that did not deploy the contract (the node's default
    one after `server start` deployed it from the operator's keystore) names the cause and leaves no files."""
    run_path, data, chain, _ = recorded_run
    stranger = LedgerContract.at(chain.w3, chain.address, sender=chain.w3.eth.accounts[1])
    with pytest.raises(NotOwner, match=r"not the owner .* \(--operator"):
        deploy(run_path, data, tmp_path / "registry", stranger, key=OPERATOR)
    assert not (tmp_path / "registry").exists()
