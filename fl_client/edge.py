"""The edge device: pull a deployed model only if the operator signed it and the pinned ledger vouches for it and
its lineage, then predict with onnxruntime alone.

What a device trusts is in its kit's ``trust.json`` (:class:`~ledger.trust.LedgerTrust`): the chain (id and
genesis hash), the lineage contract, the operator's deployment-signing key and one or more RPC endpoints. A pull
installs an artifact only when, in this order: a manifest signed by the pinned key names it, for the pinned chain
and contract, unexpired, with a sequence number above every one installed before (a replayed or older manifest
is a rollback: refused, unless the operator signed an explicit rollback statement naming that artifact); the
bytes hash to it; every RPC endpoint is on the pinned chain and shows the same ``DeploymentRecorded`` event for
it (two endpoints that disagree install nothing); and the source model's lineage verifies (every round co-signed
by t clients, ``ledger.audit``); and the device's own derivation of the artifact from that co-signed model (its
copy of the task's canonical graph, the published calibration images) gives the same artifact
(:mod:`fedproof.core.artifact`), so the operator's key alone cannot ship a graph or weights of its choosing. Loading for
prediction re-hashes the installed bytes, so nothing can be swapped between check and use. No torch anywhere on
this path.

A device that follows a release channel (:func:`follow`) changes models only on a release statement
(:mod:`ledger.release`) that is recorded on the pinned chain, signed by the pinned key and newer than the last
it acted on; it keeps the model it ran before installed, so a rollback to it is a switch, not a download. Such a
device refuses direct pulls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fedproof.core.artifact import (
    MAX_CALIBRATION_IMAGES,
    DerivationError,
    check_derived,
    derive,
    graph_record,
    record_json,
)
from fedproof.core.data import gunzip_bounded, parse_idx
from fedproof.core.drift import DriftResult, ProfileError, ReferenceProfile, check_window
from fedproof.base.errors import FedproofError
from fedproof.base.files import read_bounded, write_atomically
from fedproof.core.inference import predict, session
from fedproof.core.loaders import RecordSpec, load_rows
from ledger.audit import AuditFailure, verify_model
from ledger.contract import LedgerContract
from ledger.errors import LedgerError
from ledger.manifest import DeploymentManifest, ManifestError, SignedManifest
from ledger.release import EVERY_CHANNEL, ReleaseStatement, latest, retired, target, verified
from ledger.trust import LedgerTrust

MAX_ARTIFACT_BYTES = 256 << 20
MAX_INPUT_BYTES = 512 << 20
MAX_IMAGE_BYTES = 64 << 20
"""What a gzipped image file given to ``edge predict`` may expand to (85,000 images of 28 x 28)."""
MAX_PROFILE_BYTES = 16 << 20
MAX_CALIBRATION_BYTES = MAX_CALIBRATION_IMAGES * 28 * 28 + 4096
CURRENT = "current.json"
PREVIOUS = "previous.json"
HISTORY = "history.json"
FOLLOWING = "channel.json"
DRIFT_LOG = "drift.jsonl"


class ArtifactRejected(FedproofError):
    """A model artifact is unknown to the ledger, altered, or unreadable: it was not installed or loaded."""


@dataclass(frozen=True)
class Installed:
    artifact_sha256: str
    source_model_sha256: str
    run_round: int
    block_number: int
    tx_hash: str
    path: str
    sequence: int = 0
    version: str = ""
    profile_sha256: str = ""
    """The drift profile installed with it ('' when the release published none)."""
    graph: str = ""
    """The canonical graph it derives from."""
    record: str = ""
    """What one record of it is (that graph's RecordSpec, as JSON): what ``edge predict`` reads."""


@dataclass
class History:
    """What this device installed before: the highest manifest sequence and every artifact."""

    sequence: int = 0
    artifacts: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, install_dir: Path) -> History:
        path = install_dir / HISTORY
        if not path.is_file():
            return cls()
        try:
            doc = json.loads(_read_limited(path, 1 << 20, "install history"))
            return cls(int(doc["sequence"]), [str(a) for a in doc["artifacts"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactRejected(f"{path}: not an install history ({exc}); refusing to guess what came before") from exc


def _write_record(path: Path, record) -> None:
    """A device record (a dataclass) as indented JSON, replaced atomically."""
    write_atomically(path, (json.dumps(asdict(record), indent=2) + "\n").encode())


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    return read_bounded(path, limit, what, ArtifactRejected)


def connect(trust: LedgerTrust, urls: Sequence[str] = ()) -> list[LedgerContract]:
    """The pinned contract on each endpoint (``urls``, else the pin's own); each must be the pinned chain."""
    endpoints = list(urls) or list(trust.rpc_urls)
    if not endpoints:
        raise ArtifactRejected("no RPC endpoint to ask: give --rpc, or list rpc_urls in trust.json")
    out = []
    for url in endpoints:
        contract = LedgerContract.at(LedgerContract.connect(url), trust.contract_address)
        if (contract.chain_id, contract.genesis) != (trust.chain_id, trust.genesis):
            raise ArtifactRejected(f"{url} serves chain {contract.chain_id} (genesis {contract.genesis.hex()[:12]}…), "
                                   f"not the pinned chain {trust.chain_id} (genesis {trust.genesis.hex()[:12]}…)")
        out.append(contract)
    return out


def pull(ref: str, registry: Path, install_dir: Path, trust: LedgerTrust, contracts: Sequence[LedgerContract],
         now: float | None = None, app_graphs: Sequence[Path] = ()) -> Installed:
    """Install the artifact ``ref`` (its SHA-256 in hex, or ``latest``: the highest signed sequence) from
    ``registry``, if every check in the module docstring holds; else :class:`ArtifactRejected`, nothing installed."""
    following = Following.load(install_dir)
    if following is not None:
        raise ArtifactRejected(f"this device follows the {following.channel!r} channel: it changes models only on "
                               "signed release statements (`fedproof edge follow`)")
    try:
        manifest = _manifest(ref, registry, trust).verify(trust.deployment_key)
    except ManifestError as exc:
        raise ArtifactRejected(str(exc)) from exc
    wanted = manifest.artifact_sha256
    history = History.load(install_dir)
    current = current_model(install_dir)
    if current is not None and (current.sequence, current.artifact_sha256) == (manifest.sequence, wanted.hex()):
        load(install_dir)  # already installed: re-checked against its pinned hash, nothing to do
        return current
    if manifest.sequence <= history.sequence:
        raise ArtifactRejected(f"rollback refused: manifest sequence {manifest.sequence} is not above the "
                               f"{history.sequence} already installed (a replayed or older release)")
    if wanted.hex() in history.artifacts and not manifest.rollback:
        raise ArtifactRejected(f"rollback refused: {wanted.hex()[:16]}… was installed before, and its manifest is "
                               "not a signed rollback statement")
    installed = _install(install_dir, *_verified(manifest, registry, trust, contracts, now, app_graphs))
    history = History(manifest.sequence, history.artifacts + [wanted.hex()])
    _write_record(install_dir / HISTORY, history)
    return installed


def _verified(manifest: DeploymentManifest, registry: Path, trust: LedgerTrust, contracts: Sequence[LedgerContract],
              now: float | None, app_graphs: Sequence[Path] = ()):
    """Every check but the sequence rules: the manifest is for the pinned chain and unexpired, the artifact's bytes
    hash to it, every endpoint shows the same deployment record, the source model's lineage verifies, the artifact
    loads, its drift profile is the one signed. Returns what :func:`_install` writes."""
    wanted = manifest.artifact_sha256
    if (manifest.chain_id, manifest.genesis, manifest.contract) != (trust.chain_id, trust.genesis, trust.contract):
        raise ArtifactRejected(f"the manifest of {wanted.hex()[:16]}… is for chain {manifest.chain_id} (genesis "
                               f"{manifest.genesis.hex()[:12]}…, contract 0x{manifest.contract.hex()}), not the "
                               "pinned one")
    if manifest.expires < (time.time() if now is None else now):
        raise ArtifactRejected(f"the manifest of {wanted.hex()[:16]}… expired; ask the operator for a new release")
    data = _read_limited(registry / f"{wanted.hex()}.onnx", MAX_ARTIFACT_BYTES, "model artifact")
    if hashlib.sha256(data).digest() != wanted:
        raise ArtifactRejected(f"artifact {wanted.hex()[:16]}… in {registry} does not hash to its name: altered, "
                               "refusing it")
    record = _agreed_record(manifest, contracts)
    try:
        for contract in contracts:
            verify_model(contract, manifest.source_model_sha256.hex(), [registry / "bundles"])
    except (AuditFailure, LedgerError) as exc:
        raise ArtifactRejected(f"the source model of {wanted.hex()[:16]}… does not verify: {exc}") from exc
    spec = _check_derivation(manifest, registry, data, app_graphs)
    try:
        session(data)  # it must load before it is installed
    except Exception as exc:  # onnxruntime raises its own, untyped, errors
        raise ArtifactRejected(f"artifact {wanted.hex()[:16]}… does not load: {exc}") from exc
    profile = _profile(registry / f"{wanted.hex()}.profile.json", manifest.profile_sha256) \
        if manifest.profile_sha256 else None
    return manifest, data, record, profile, spec


def _check_derivation(manifest: DeploymentManifest, registry: Path, artifact: bytes, app_graphs: Sequence[Path] = ()
                      ) -> RecordSpec:
    """Rebuild the artifact from the co-signed source model (its bytes by hash), this device's own copy of the
    canonical graph and the published calibration images, and refuse it unless it is what that gives
    (:mod:`fedproof.core.artifact`). The operator's key alone cannot ship a graph or a weight. Returns what one
    record of it is."""
    wanted, derivation = manifest.artifact_sha256, manifest.derivation
    weights = _read_limited(registry / "models" / f"{manifest.source_model_sha256.hex()}.safetensors",
                            MAX_ARTIFACT_BYTES, "source model")
    if hashlib.sha256(weights).digest() != manifest.source_model_sha256:
        raise ArtifactRejected(f"the source model of {wanted.hex()[:16]}… in {registry} is not the co-signed one")
    calibration = _read_limited(registry / "calibration" / f"{derivation.calibration_sha256.hex()}.npy",
                                MAX_CALIBRATION_BYTES, "calibration image file")
    if hashlib.sha256(calibration).digest() != derivation.calibration_sha256:
        raise ArtifactRejected(f"the calibration images of {wanted.hex()[:16]}… are not the ones its manifest names")
    try:
        _, derived = derive(derivation.graph, weights, calibration, derivation.per_channel, app_graphs)
        check_derived(artifact, derived)
        return graph_record(derivation.graph, app_graphs)
    except DerivationError as exc:
        raise ArtifactRejected(f"artifact {wanted.hex()[:16]}… does not derive from its co-signed model: {exc}") \
            from exc


def _install(install_dir: Path, manifest: DeploymentManifest, data: bytes, record, profile: bytes | None,
             spec: RecordSpec) -> Installed:
    """Write the artifact (and its profile) and make it current; what was current becomes the previous model, kept
    for an instant switch back; older files are removed. A model of other records than the installed one's (another
    task) is refused: a device changes task with a new install directory."""
    wanted = manifest.artifact_sha256.hex()
    current = current_model(install_dir)
    if current is not None and current.record and current.record != record_json(spec):
        raise ArtifactRejected(f"{wanted[:16]}… takes other records ({record_json(spec)[:80]}…) than the installed model "
                               f"({current.record[:80]}…): a model of another task; install it in a new --install-dir")
    install_dir.mkdir(parents=True, exist_ok=True)
    target = install_dir / f"{wanted}.onnx"
    write_atomically(target, data)
    if profile is not None:
        write_atomically(install_dir / f"{wanted}.profile.json", profile)
    installed = Installed(wanted, manifest.source_model_sha256.hex(), manifest.round, record.block_number,
                          record.tx_hash, str(target), manifest.sequence, manifest.version,
                          manifest.profile_sha256.hex(), manifest.derivation.graph, record_json(spec))
    _make_current(install_dir, installed)
    return installed


def _make_current(install_dir: Path, installed: Installed) -> None:
    current = current_model(install_dir)
    if current is not None and current.artifact_sha256 != installed.artifact_sha256:
        _write_record(install_dir / PREVIOUS, current)
    _write_record(install_dir / CURRENT, installed)
    keep = {installed.artifact_sha256} | ({current.artifact_sha256} if current is not None else set())
    for path in install_dir.glob("*.onnx"):
        if path.stem not in keep:
            path.unlink()
            path.with_suffix(".profile.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- release channels


@dataclass(frozen=True)
class Following:
    """A device that follows a release channel: the channel, its id for canaries and the last statement acted on."""

    channel: str
    device_id: str
    sequence: int = 0

    def save(self, install_dir: Path) -> None:
        install_dir.mkdir(parents=True, exist_ok=True)
        _write_record(install_dir / FOLLOWING, self)

    @classmethod
    def load(cls, install_dir: Path) -> Following | None:
        path = install_dir / FOLLOWING
        if not path.is_file():
            return None
        try:
            doc = json.loads(_read_limited(path, 1 << 16, "channel record"))
            return cls(str(doc["channel"]), str(doc["device_id"]), int(doc["sequence"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactRejected(f"{path}: not a channel record ({exc}); refusing to guess what was applied") from exc


@dataclass(frozen=True)
class FollowResult:
    installed: Installed | None
    """What the device runs now (None: nothing released to it yet)."""
    statement: ReleaseStatement | None
    """The newest statement of the channel the pinned key signed."""
    changed: str = ""
    """'', 'installed' (verified and installed) or 'switched' (to the kept previous model, no download)."""
    ignored: tuple[str, ...] = ()
    """Release records on chain that are not the pinned operator's: reported, never acted on."""


def new_device_id() -> str:
    """A random id for a device that has none (canary shares are computed from it)."""
    import secrets

    return secrets.token_hex(16)


def follow(channel: str, registry: Path, install_dir: Path, trust: LedgerTrust, contracts: Sequence[LedgerContract],
           device_id: str | None = None, now: float | None = None, app_graphs: Sequence[Path] = ()) -> FollowResult:
    """Run what the newest release statement of ``channel`` says this device runs: act only on statements on the
    pinned chain (every endpoint agreeing), signed by the pinned operator key, newer than the last one acted on;
    switch to the kept previous model at once, or verify and install a new one as :func:`pull` does."""
    following = Following.load(install_dir)
    if following is not None and following.channel != channel:
        raise ArtifactRejected(f"{install_dir} follows the {following.channel!r} channel, not {channel!r}: a device "
                               "changes channel with a new --install-dir")
    if following is not None and device_id and device_id != following.device_id:
        raise ArtifactRejected(f"{install_dir} belongs to device {following.device_id!r}, not {device_id!r}")
    following = following or Following(channel, device_id or new_device_id())
    statements, ignored = _channel_statements(channel, trust, contracts)
    newest = latest(statements, channel)
    current = current_model(install_dir)
    if newest is None or newest.sequence <= following.sequence:
        following.save(install_dir)
        if current is not None:
            load(install_dir)
        return FollowResult(current, newest, ignored=tuple(ignored))
    wanted = target(newest, following.device_id)
    if wanted in retired(statements):
        raise ArtifactRejected(f"release {newest.sequence} names artifact {wanted.hex()[:16]}…, which is retired: "
                               "refusing it")
    changed = ""
    if wanted == bytes(32):
        pass  # outside a first canary, with nothing released before it: nothing to run yet
    elif current is not None and current.artifact_sha256 == wanted.hex():
        load(install_dir)
    else:
        previous = _previous(install_dir)
        if previous is not None and previous.artifact_sha256 == wanted.hex():
            _make_current(install_dir, previous)
            load(install_dir)  # re-hashed against the hash pinned when it was installed
            changed = "switched"
        else:
            try:
                manifest = SignedManifest.load(registry / f"{wanted.hex()}.manifest.json").verify(trust.deployment_key)
            except ManifestError as exc:
                raise ArtifactRejected(str(exc)) from exc
            if manifest.artifact_sha256 != wanted:
                raise ArtifactRejected(f"the manifest filed for {wanted.hex()[:16]}… names another artifact")
            _install(install_dir, *_verified(manifest, registry, trust, contracts, now, app_graphs))
            changed = "installed"
    dataclasses.replace(following, sequence=newest.sequence).save(install_dir)
    return FollowResult(current_model(install_dir), newest, changed, tuple(ignored))


def _channel_statements(channel: str, trust: LedgerTrust,
                        contracts: Sequence[LedgerContract]) -> tuple[list[ReleaseStatement], list[str]]:
    """The channel's and the retirement statements as every endpoint records them, split into the pinned
    operator's and the rest."""
    seen = []
    for contract in contracts:
        seen.append(contract.release_events(channel=channel) + contract.release_events(channel=EVERY_CHANNEL))
    if len({tuple((e.sequence, e.tx_hash, e.block_hash) for e in events) for events in seen}) != 1:
        raise ArtifactRejected("the RPC endpoints disagree about the release records: changing nothing")
    good, bad = verified(seen[0], trust.deployment_key, trust.chain_id, trust.genesis, trust.contract)
    return [statement for _, statement in good], bad


def _previous(install_dir: Path) -> Installed | None:
    return _installed_record(install_dir / PREVIOUS)


def _profile(path: Path, pinned: bytes) -> bytes:
    """The drift profile's bytes, if they hash to what the signed manifest names and parse as a profile."""
    data = _read_limited(path, MAX_PROFILE_BYTES, "drift profile")
    if hashlib.sha256(data).digest() != pinned:
        raise ArtifactRejected(f"drift profile {path} does not hash to what the signed manifest names: altered")
    try:
        ReferenceProfile.from_dict(json.loads(data))
    except (ValueError, ProfileError) as exc:
        raise ArtifactRejected(f"drift profile {path} is not a profile: {exc}") from exc
    return data


def monitor(install_dir: Path, images: np.ndarray, predictions: np.ndarray, alpha: float = 0.01,
            now: float | None = None) -> DriftResult:
    """Test ``images`` (a window of recent inputs) and the model's ``predictions`` for drift against the installed
    model's signed profile; append the outcome to ``drift.jsonl`` beside it. Only aggregates are written: no input
    leaves this function."""
    current = current_model(install_dir)
    if current is None or not current.profile_sha256:
        raise ArtifactRejected(f"no installed model with a drift profile in {install_dir}: pull a release that "
                               "publishes one")
    path = install_dir / f"{current.artifact_sha256}.profile.json"
    profile = ReferenceProfile.from_dict(json.loads(_profile(path, bytes.fromhex(current.profile_sha256))))
    result = check_window(profile, images, predictions, alpha)
    entry = {"time": time.time() if now is None else now, "artifact": current.artifact_sha256,
             "window": result.window, "drift": result.drift, "covariate_drift": result.covariate_drift,
             "label_drift": result.label_drift, "ks_p": result.ks_p, "mmd": result.mmd, "mmd_p": result.mmd_p,
             "labels_chi2": result.labels_chi2, "labels_p": result.labels_p, "alpha": alpha}
    with open(install_dir / DRIFT_LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")
    return result


def current_model(install_dir: Path) -> Installed | None:
    """The record of the installed model (None: none yet); its bytes are re-hashed by :func:`load`, not here."""
    return _installed_record(install_dir / CURRENT)


def _installed_record(path: Path) -> Installed | None:
    if not path.is_file():
        return None
    try:
        return Installed(**json.loads(_read_limited(path, 1 << 16, "installed model record")))
    except (TypeError, ValueError) as exc:
        raise ArtifactRejected(f"{path}: not an installed-model record ({exc})") from exc


def _manifest(ref: str, registry: Path, trust: LedgerTrust) -> SignedManifest:
    if ref != "latest":
        try:
            wanted = bytes.fromhex(ref)
        except ValueError:
            wanted = b""
        if len(wanted) != 32:
            raise ManifestError(f"{ref!r} is not an artifact hash (64 hex digits) or 'latest'")
        return SignedManifest.load(registry / f"{wanted.hex()}.manifest.json")
    best: SignedManifest | None = None
    for path in registry.glob("*.manifest.json"):
        try:
            signed = SignedManifest.load(path)
            signed.verify(trust.deployment_key)
        except ManifestError:
            continue  # not the operator's: never a candidate for "latest"
        if best is None or signed.manifest.sequence > best.manifest.sequence:
            best = signed
    if best is None:
        raise ManifestError(f"no manifest in {registry} is signed by the pinned operator key")
    return best


def _agreed_record(manifest: DeploymentManifest, contracts: Sequence[LedgerContract]):
    """The ``DeploymentRecorded`` event of the manifest's artifact, the same on every endpoint."""
    seen = []
    for contract in contracts:
        found = [e for e in contract.deployment_events(artifact_hash=manifest.artifact_sha256)
                 if (e.model_hash, e.round) == (manifest.source_model_sha256, manifest.round)]
        if not found:
            raise ArtifactRejected(f"artifact {manifest.artifact_sha256.hex()} is not recorded as a deployment of "
                                   f"its source model on the ledger at {contract._url}: refusing it")
        seen.append(found[-1])
    if len({(e.tx_hash, e.block_hash) for e in seen}) != 1:
        raise ArtifactRejected("the RPC endpoints disagree about the deployment record: refusing to install")
    return seen[0]


def load(install_dir: Path):
    """The installed model's session, built from bytes re-hashed against the hash pinned at install."""
    current = current_model(install_dir)
    if current is None:
        raise ArtifactRejected(f"no installed model in {install_dir}: run `fedproof edge pull` first")
    data = _read_limited(Path(current.path), MAX_ARTIFACT_BYTES, "model artifact")
    if hashlib.sha256(data).hexdigest() != current.artifact_sha256:
        raise ArtifactRejected(f"installed model {current.path} was altered after it was verified: not loading it")
    return session(data), current


def read_inputs(path: Path, record: RecordSpec) -> np.ndarray:
    """What the installed model is asked about, in its task's terms: table rows from a CSV or Parquet file (by
    column name; a label column may be there or not), else images as :func:`read_images` reads them."""
    if record.is_table:
        if path.suffix.lower() == ".npy":
            import io

            try:
                rows = np.load(io.BytesIO(_read_limited(path, MAX_INPUT_BYTES, "input file")), allow_pickle=False)
            except ValueError as exc:
                raise FedproofError(f"{path}: not a .npy array ({exc})") from exc
            if rows.ndim != 2 or rows.shape[1:] != record.shape or rows.dtype.kind not in "iuf":
                raise FedproofError(f"{path}: expected rows of shape (n, {record.shape[0]}), got {rows.dtype} {rows.shape}")
            return rows.astype(np.float32)
        return load_rows(path, record, MAX_INPUT_BYTES)
    return read_images(path)


def installed_record(install_dir: Path) -> RecordSpec:
    """The installed model's records, from this device's own copy of its canonical graph."""
    current = current_model(install_dir)
    if current is None:
        raise ArtifactRejected(f"no installed model in {install_dir}: run `fedproof edge pull` first")
    if current.record:
        doc = json.loads(current.record)
        return RecordSpec(tuple(doc["shape"]), doc["dtype"], tuple(doc["columns"]), doc["label"], tuple(doc["classes"]))
    return RecordSpec(shape=(28, 28), dtype="uint8")


def read_images(path: Path) -> np.ndarray:
    """uint8 ``(n, 28, 28)`` images from an IDX file (gzipped or not) or a ``.npy`` (never pickled)."""
    data = _read_limited(path, MAX_INPUT_BYTES, "image file")
    if path.suffix == ".npy":
        import io

        try:
            images = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise FedproofError(f"{path}: not a .npy array ({exc})") from exc
    else:
        raw = gunzip_bounded(data, MAX_IMAGE_BYTES, str(path)) if data[:2] == b"\x1f\x8b" else data
        images = parse_idx(raw, str(path))
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise FedproofError(f"{path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}")
    return images


def classify(install_dir: Path, images: np.ndarray) -> np.ndarray:
    sess, _ = load(install_dir)
    return predict(sess, images)

