"""One dataclass holds every setting of a run, resolved once: CLI > pyproject ``[tool.flwr.app.config]`` > defaults.

Flower passes settings as a flat mapping of kebab-case keys (``context.run_config``, a ``ConfigRecord``);
:meth:`RunConfig.from_mapping` and :meth:`RunConfig.to_mapping` translate between that and the dataclass,
refusing unknown keys and wrong types so that a typo fails loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedproof.base.errors import ConfigError
from ledger.verification import Domain

if TYPE_CHECKING:
    from privacy.dp import DPSettings

PARTITIONS = ("iid", "dirichlet", "pathological")
Scalar = int | float | str | bool


#: Default learning rates (``lr = 0``): DP-SGD's per-sample clipping at 0.1 bounds each step, so it takes a large
#: one (benchmarks/privacy_utility.py); unclipped SGD at that rate diverges (80% and updates past HE's range).
DP_LR, PLAIN_LR = 4.0, 0.05
#: Default batch and local epochs (``0``): DP-SGD wants large batches (less noise per averaged gradient) and many
#: short rounds; plain SGD trains best on small batches and a few epochs per round (90.05% against 80.0% with
#: DP's defaults, benchmarks/privacy_utility.py's no-DP row).
DP_BATCH, PLAIN_BATCH = 512, 64
USER_LR, USER_BATCH, USER_EPOCHS = 0.05, 16, 2
DP_EPOCHS, PLAIN_EPOCHS = 1, 3


@dataclass(frozen=True)
class RunConfig:
    """Settings of one federated run. Field ``foo_bar`` is key ``foo-bar`` in Flower's run config."""

    clients: int = 10
    """Number of simulated clients (SuperNodes); also the number of data partitions."""
    rounds: int = 30
    """Many short rounds (one local epoch each) under one lifetime budget: measured best under DP
    (benchmarks/privacy_utility.py)."""
    fraction_train: float = 1.0
    """Fraction of connected clients sampled for training each round."""
    fraction_evaluate: float = 1.0
    """Fraction sampled for evaluation on their local validation split (0 disables it)."""
    partition: str = "dirichlet"
    """How training data is split among clients: iid, dirichlet or pathological."""
    alpha: float = 0.5
    """Dirichlet concentration: smaller is more skewed."""
    classes_per_client: int = 2
    """Classes each client holds under pathological partitioning."""
    task: str = "fashion-mnist"
    """What is trained (fedproof.core.task): a built-in task (fashion-mnist, breast-cancer) or ``module:Class`` of
    an installed package. A device trains only the task its own node config names."""
    model: str = ""
    """One of the task's models ('': its default). fashion-mnist: scatternet (fixed wavelet-scattering features
    and a linear head, best under DP) or cnn (the end-to-end tanh CNN); breast-cancer: mlp or logistic."""
    device: str = "auto"
    """Where clients train: auto (a CUDA GPU when there is one, else the CPU), cpu, or cuda (cuda:N)."""
    gpus_per_client: float = 0.0
    """Simulation: the fraction of a GPU each simulated client reserves (Flower's client resources; 0: none)."""
    local_epochs: int = 0
    """0: 1 under DP, 3 without (see :meth:`training_epochs`)."""
    batch_size: int = 0
    """Expected batch (Poisson sampling under DP); 0: 512 under DP (large batches shrink the noise per averaged
    gradient), 64 without (see :meth:`training_batch`)."""
    lr: float = 0.0
    """0: 4.0 under DP (scaled with the batch and the small clip norm: a step moves at most lr * max-grad-norm),
    0.05 without DP, whose gradients are not clipped (see :meth:`learning_rate`)."""
    momentum: float = 0.9
    val_fraction: float = 0.1
    """Share of each client's partition held out as its local validation split."""
    seed: int = 42
    """Seeds partitioning, model initialisation and client sampling order of batches."""
    data_dir: str = ""
    """Where the dataset lives; empty searches the default places (see fedproof.core.data)."""
    run_dir: str = "runs"
    """Parent directory of run directories."""
    run_id: str = ""
    """Name of this run's directory under run_dir; empty picks a timestamped one."""
    resume: bool = False
    """Continue run-id from its last recorded round (after a crash) instead of starting it afresh."""
    round_timeout: float = 3600.0
    """Seconds the server waits for replies in each phase of a round."""
    connect_timeout: float = 300.0
    """Seconds the server waits, before the first round, for ``clients`` clients to connect."""
    dp: bool = True
    """Train every client with DP-SGD (Opacus) under a privacy budget."""
    privacy: str = "sample"
    """What DP protects: ``sample`` (each record: DP-SGD on every device) or ``user`` (each device's whole dataset:
    DP-FedAvg with update clipping, noise every device adds a share of under threshold HE, and devices that sample
    themselves; privacy.user_dp)."""
    server_lr: float = 1.0
    """The server's step along each round's mean update (DP-FedAvg's server learning rate): noise averaged over a
    hundred devices allows steps larger than one."""
    participation: float = 0.1
    """User-level DP: the probability q a device takes part when asked (its policy may lower it)."""
    update_clip: float = 0.3
    """User-level DP: the largest L2 norm of a device's whole update."""
    user_noise: float = 0.0
    """User-level DP: the noise multiplier of any accepted sum (0: calibrated to target-epsilon over ``rounds``)."""
    clip_quantile: float = 0.0
    """User-level DP: adaptive clipping (Andrew et al., NeurIPS 2021) toward the clip this share of the updates fit
    under (0: a fixed ``update-clip``, which is then only the first round's)."""
    clip_lr: float = 0.2
    """Adaptive clipping: the geometric step of the clip per round."""
    clip_count_noise: float = 5.0
    """Adaptive clipping: the standard deviation of the noise on the count of unclipped updates (Andrew et al.'s
    sigma_b: a twentieth of the contributors expected in a round)."""
    target_epsilon: float = 3.0
    """Each client's privacy budget over the whole run (0: no budget, needs a noise multiplier)."""
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    """Fixed DP noise; 0 calibrates it once from target-epsilon for the planned rounds."""
    max_grad_norm: float = 0.1
    """Per-sample gradient clipping bound of DP-SGD (Tramer & Boneh's 0.1)."""
    grad_sample_mode: str = "ghost"
    """How Opacus clips per-sample gradients: ghost (norms without materialising each sample's gradient: 4x faster
    on the linear head), hooks or functorch; all clip and noise alike (benchmarks/dp_overhead.py)."""
    accountant: str = "prv"
    he: bool = True
    """Encrypt updates with threshold CKKS (privacy.threshold): the clients generate a joint key, the server sums
    ciphertexts it cannot read, and t key holders decrypt only the verified sum."""
    he_threshold: int = 0
    """How many key holders must take part to decrypt (0: a majority of them)."""
    committee: int = 0
    """How many devices hold the threshold key: 0 lets the run decide (every client up to 32 of them, beyond that
    the smallest committee a draw keeps safe); a positive number draws a committee of that size by sortition
    (ledger.committee); -1: every client, however many."""
    colluding_share: float = 0.1
    """A drawn committee: the share of the registered clients assumed to be the server's accomplices (a device's
    policy may assume more)."""
    min_contributors: int = 3
    """Fewest distinct clients' updates a sum must hold for a decryptor to take part (never below 2; a device's
    policy may ask for more)."""
    he_weight_scale: int = 0
    """Clients encrypt (weight / he-weight-scale) * update, so any sum stays within the scheme's range;
    0: the registered weights' total, resolved at start."""
    key_set: str = ""
    """Directory of the run's key set (fedproof keys init); empty: one kept beside the devnet (simulation)."""
    ledger: bool = True
    """Record every round's lineage on an Ethereum ledger (a local anvil devnet unless ledger-url is given)."""
    ledger_url: str = ""
    """JSON-RPC URL of the ledger node; empty: start (or reuse) the local devnet in devnet-dir."""
    devnet_dir: str = ""
    """Where the local devnet keeps its chain; empty: ~/.local/share/fedproof/devnet."""
    devnet_port: int = 0
    """Port of the local devnet; 0: the directory's own (recorded there; 8545 for the default directory, a free
    port chosen at first start for any other)."""
    ledger_contract: str = ""
    """Address of the lineage contract; empty: deploy it once per chain and remember it."""
    chain_id: int = 0
    """Chain the run records on (resolved at start; 0 without a ledger). Clients sign it into every update."""
    ledger_operator: str = ""
    """The operator's key directory (its encrypted ledger keystore writes the records); empty: the node's first
    unlocked account (anvil's dev account 0: the local playground only)."""
    ledger_password_file: str = ""
    """File with the operator key's password (the server kit keeps it 0600)."""
    chain_genesis: str = ""
    """The chain's genesis block hash, 0x-prefixed hex (resolved at start; empty without a ledger): signed into
    every statement, since every fresh devnet has the same chain id and first contract address."""
    max_unrecorded_rounds: int = 3
    """Rounds training may run ahead of an unreachable ledger before it pauses until the ledger is back."""
    metrics_port: int = 0
    """Serve Prometheus metrics of the federation on this port of the server (0: off)."""
    metrics_address: str = "127.0.0.1"
    """Address the metrics are served on: loopback unless the operator names another (a scraper's network)."""
    tracking_uri: str = ""
    """MLflow tracking URI the run is logged to: empty for a file store in the run directory (``mlruns/``), any
    MLflow URI (``http://...``, ``sqlite:///...``), or ``off``."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.clients >= 1, "clients must be at least 1"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (0.0 < self.fraction_train <= 1.0, "fraction-train must be in (0, 1]"),
            (0.0 <= self.fraction_evaluate <= 1.0, "fraction-evaluate must be in [0, 1]"),
            (self.partition in PARTITIONS, f"partition must be one of {', '.join(PARTITIONS)}"),
            (self.alpha > 0 and math.isfinite(self.alpha), "alpha must be a positive number"),
            (self.classes_per_client >= 1, "classes-per-client must be at least 1"),
            (not self.model or self.model.isidentifier(), "model must be a model name of the task ('': its default)"),
            (bool(self.task) and "/" not in self.task, "task must name a built-in task or 'module:Class'"),
            (self.local_epochs >= 0, "local-epochs must be at least 1 (0: the default for dp)"),
            (self.batch_size >= 0, "batch-size must be at least 1 (0: the default for dp)"),
            (self.lr >= 0 and math.isfinite(self.lr), "lr must be a non-negative number (0: the default for dp)"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             "device must be auto, cpu, cuda or cuda:N"),
            (0.0 <= self.gpus_per_client <= 1.0, "gpus-per-client must be in [0, 1]"),
            (self.privacy in ("sample", "user"), "privacy must be sample or user"),
            (self.privacy == "sample" or not self.dp or self.he,
             "privacy=user needs he=true: each device adds only a share of the noise, which holds only in a sum"),
            (0.0 < self.participation <= 1.0, "participation must be in (0, 1]"),
            (self.update_clip > 0 and math.isfinite(self.update_clip), "update-clip must be a positive number"),
            (self.user_noise >= 0 and math.isfinite(self.user_noise), "user-noise must be non-negative (0: calibrate)"),
            (0 <= self.clip_quantile < 1, "clip-quantile must be in [0, 1) (0: a fixed clip)"),
            (0 < self.clip_lr <= 1, "clip-lr must be in (0, 1]"),
            (self.clip_count_noise > 0 and math.isfinite(self.clip_count_noise), "clip-count-noise must be positive"),
            (0.0 <= self.val_fraction < 1.0, "val-fraction must be in [0, 1)"),
            (self.seed >= 0, "seed must be non-negative"),
            (self.round_timeout > 0, "round-timeout must be positive"),
            (self.connect_timeout >= 0, "connect-timeout must be non-negative"),
            (self.he_threshold >= 0, "he-threshold must be non-negative (0: a majority)"),
            (self.committee >= -1, "committee must be -1 (every client), 0 (decide) or a size"),
            (0 <= self.colluding_share < 1, "colluding-share must be in [0, 1)"),
            (0 < self.server_lr <= 10, "server-lr must be in (0, 10]"),
            (self.min_contributors >= 2, "min-contributors must be at least 2"),
            (self.he_weight_scale >= 0, "he-weight-scale must be non-negative (0: resolved at start)"),
            (_is_address(self.ledger_contract), "ledger-contract must be empty or a 0x-prefixed 20-byte address"),
            (self.chain_id >= 0, "chain-id must be non-negative"),
            (_is_hash(self.chain_genesis), "chain-genesis must be empty or a 0x-prefixed 32-byte hash"),
            (0 <= self.devnet_port < 65536, "devnet-port must be in 0..65535 (0: the devnet directory's own)"),
            (self.max_unrecorded_rounds >= 0, "max-unrecorded-rounds must be non-negative"),
            ("/" not in self.run_id and self.run_id not in (".", ".."), "run-id must be a plain name"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("invalid run configuration: " + "; ".join(problems))
        if self.dp:
            self.dp_settings()  # refuse bad DP settings now, before any training

    @property
    def user_level(self) -> bool:
        """User-level DP: devices train without per-sample clipping and clip their whole update."""
        return self.dp and self.privacy == "user"

    @property
    def count_slots(self) -> int:
        """Values encrypted after the model's in each update: adaptive clipping's unclipped bit (user-level DP)."""
        return int(self.user_level and self.clip_quantile > 0)

    def learning_rate(self) -> float:
        """``lr``, or when it is 0 the default that suits the gradients: clipped under DP-SGD, raw without (and
        under user-level DP, where the whole update is clipped: 0.05, benchmarks/fleet.py)."""
        return self.lr or (USER_LR if self.user_level else DP_LR if self.dp else PLAIN_LR)

    def training_batch(self) -> int:
        """``batch-size``, or when it is 0 the default of the mode: 512 under DP-SGD, 64 without, 16 for a
        user-level device (a few dozen records each)."""
        return self.batch_size or (USER_BATCH if self.user_level else DP_BATCH if self.dp else PLAIN_BATCH)

    def training_epochs(self) -> int:
        """``local-epochs``, or when it is 0 the default of the mode: 1 under DP-SGD, 3 without, 2 for a
        user-level device (benchmarks/fleet.py)."""
        return self.local_epochs or (USER_EPOCHS if self.user_level else DP_EPOCHS if self.dp else PLAIN_EPOCHS)

    def dp_settings(self) -> DPSettings | None:
        """The clients' DP-SGD settings, or None when DP is off."""
        if not self.dp:
            return None
        from privacy.dp import DPSettings  # imports opacus: only when DP is used
        from privacy.errors import DPConfigError

        try:
            return DPSettings(
                max_grad_norm=self.max_grad_norm,
                delta=self.delta,
                target_epsilon=self.target_epsilon or None,
                noise_multiplier=self.noise_multiplier or None,
                accountant=self.accountant,
                grad_sample_mode=self.grad_sample_mode,
            )
        except DPConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def contract_bytes(self) -> bytes:
        """The lineage contract's 20-byte address, signed into every update (zeros without a ledger)."""
        return bytes.fromhex(self.ledger_contract[2:]) if self.ledger_contract else bytes(20)

    def domain(self) -> Domain:
        """Where this run's statements belong: what every signature of it binds."""
        return Domain(self.chain_id, self.contract_bytes(), self.run_id, self.genesis_bytes())

    def genesis_bytes(self) -> bytes:
        """The chain's genesis block hash, signed into every statement (zeros without a ledger)."""
        return bytes.fromhex(self.chain_genesis[2:]) if self.chain_genesis else bytes(32)

    # ----------------------------------------------------------------------------- Flower's flat mapping
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(_key(f.name) for f in fields(cls))

    def to_mapping(self) -> dict[str, Scalar]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build a config from kebab-case keys over ``base`` (defaults if None), checking keys and types."""
        types = {_key(f.name): (f.name, f.type) for f in fields(cls)}
        unknown = sorted(set(mapping) - set(types))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(types)}")
        changes = {types[key][0]: _coerce(key, value, types[key][1]) for key, value in mapping.items()}
        return dataclasses.replace(base or cls(), **changes)

    def client_record(self, shared_machine: bool = True) -> dict[str, Scalar]:
        """What this run's clients are sent with every message (:class:`ClientSettings`)."""
        return ClientSettings.of(self, shared_machine).to_record()

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """Apply the non-None keyword overrides (field names), as the CLI passes them."""
        given = {_key(name): value for name, value in overrides.items() if value is not None}
        return RunConfig.from_mapping(given, base=self)


def _is_address(value: str, size: int = 20) -> bool:
    if not value:
        return True
    try:
        return value.startswith("0x") and len(bytes.fromhex(value[2:])) == size
    except ValueError:
        return False


def _is_hash(value: str) -> bool:
    return _is_address(value, 32)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, annotation: Any) -> Scalar:
    kind = {"int": int, "float": float, "str": str, "bool": bool}[str(annotation)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not kind:
        raise ConfigError(f"setting {key} must be {kind.__name__}, got {value!r}")
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Scalar]:
    """``-c key=value`` settings, as ``flwr run -c`` reads them: each value is a TOML value (``true``, ``3``,
    ``1e-5``, ``"text"``). For a text setting the quotes may be left out (``-c grad-sample-mode=functorch``),
    since the setting's type says what the value is; a value that is not of the setting's type is refused."""
    types = {_key(f.name): str(f.type) for f in fields(RunConfig)}
    overrides: dict[str, Scalar] = {}
    for item in items or []:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or key not in types:
            raise ConfigError(f"-c {item!r}: expected key=value with a known key; known: {', '.join(types)}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            if types[key] != "str":
                raise ConfigError(f"-c {item!r}: {text!r} is not a TOML value of type {types[key]}") from None
            value = text
        if types[key] == "str" and not isinstance(value, str):
            value = text  # run-id=2026 is the text "2026"
        overrides[key] = value
    return overrides


FEDPROOF_SERVERAPP = "fl_server.server_app:app"


def pyproject_overrides(app_dir: Path) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` of ``app_dir/pyproject.toml`` if it is a fedproof app (fedproof's own, or a
    project ``fedproof new`` made, whose ServerApp is fedproof's), or {}.

    Another project's pyproject is ignored: its keys are not ours.
    """
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    flwr = doc.get("tool", {}).get("flwr", {}).get("app", {})
    if doc.get("project", {}).get("name") != "fedproof" and \
            flwr.get("components", {}).get("serverapp") != FEDPROOF_SERVERAPP:
        return {}
    return dict(doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def resolve(cli: Mapping[str, Any] | None = None, app_dir: Path | None = None,
            settings: Mapping[str, Scalar] | None = None) -> RunConfig:
    """Resolve a run's settings once: CLI options (field names, None = not given) > ``-c`` settings (keys, as
    :func:`parse_overrides` reads them) > pyproject > defaults."""
    base = RunConfig.from_mapping({**pyproject_overrides(app_dir or Path.cwd()), **(settings or {})})
    return base.with_overrides(**(cli or {}))


@dataclass(frozen=True)
class ClientSettings:
    """What a client is sent with every message: the settings a client acts on, and nothing else.

    ``RunConfig`` is the user's intent for the whole run (47 settings, among them the server's paths, its ledger
    operator and password file, its ports). A client needs its training (model, data split, batch, epochs, lr), its
    privacy (DP settings, the rounds its budget is planned over), the aggregation (HE, the threshold, the floor of
    contributors) and the domain it signs for. In a simulation, where every client shares the server's machine and
    files, the key set, run directory and data directory travel too; to a device they never do (its own come from
    its node config and kit). A record with a key outside this vocabulary is refused."""

    values: Mapping[str, Scalar]

    KEYS = ("run-id", "seed", "clients", "rounds", "task", "model", "device", "partition", "alpha",
            "classes-per-client", "val-fraction", "local-epochs", "batch-size", "lr", "momentum", "dp",
            "target-epsilon", "delta", "noise-multiplier", "max-grad-norm", "accountant", "grad-sample-mode",
            "privacy", "participation", "update-clip", "user-noise", "clip-quantile", "clip-count-noise", "he",
            "he-threshold", "min-contributors",
            "colluding-share", "server-lr", "ledger", "chain-id", "ledger-contract", "chain-genesis")
    SHARED_MACHINE_KEYS = ("key-set", "run-dir", "data-dir")

    @classmethod
    def of(cls, config: RunConfig, shared_machine: bool, resolved: Mapping[str, Scalar] | None = None
           ) -> ClientSettings:
        """The settings ``config`` gives its clients, with what start-up ``resolved`` (the chain they sign for, the
        key set's path); with their paths only when they share this machine."""
        mapping = {**config.to_mapping(), **(resolved or {})}
        keys = cls.KEYS + (cls.SHARED_MACHINE_KEYS if shared_machine else ())
        return cls({key: mapping[key] for key in keys})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientSettings:
        unknown = sorted(set(record) - set(cls.KEYS) - set(cls.SHARED_MACHINE_KEYS))
        if unknown:
            raise ConfigError(f"the server sent setting(s) a client does not take: {', '.join(unknown)}")
        return cls(dict(record))

    def to_record(self) -> dict[str, Scalar]:
        return dict(self.values)

    def run_config(self) -> RunConfig:
        """The run as this client sees it (settings it was not sent keep their defaults, and it uses none)."""
        return RunConfig.from_mapping(self.values)
