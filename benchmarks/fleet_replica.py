"""User-level DP-FedAvg on a fleet, in numpy: the mechanism of ``privacy = "user"`` without the transport, for the
accuracy/epsilon table of ``benchmarks/fleet.py`` (hundreds of rounds in a minute).

Same data as ``fedproof simulate --clients N --partition dirichlet``: each device's training split from
fedproof's own partitioning, the scattering features of the task's default model, the head trained by local SGD
with momentum as ``fl_client.training.train_plain`` does. Per round, each device takes part with probability q;
it clips its whole update to C; the noise is either added once (central: the server adds N(0, (sigma C)^2), and
must be trusted) or in shares (distributed: each device adds N(0, (sigma C)^2 / (floor - colluders)), so any sum
of at least ``floor`` devices carries the full noise, and a sum of k carries k / (floor - colluders) of it). The
server divides by the expected number of contributors (q N, public) and applies server momentum.

Adaptive clipping (Andrew et al., NeurIPS 2021): each contributor also reports whether its update norm was within
C, noised; C moves geometrically towards the target quantile of the norms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fedproof.core.client_data import load_client_data
from fedproof.core.config import RunConfig
from fedproof.core.features import feature_cache_dir, features
from fedproof.core.task import load_task, task_dataset


@dataclass(frozen=True)
class Fleet:
    x: list[np.ndarray]
    y: list[np.ndarray]
    test_x: np.ndarray
    test_y: np.ndarray
    init_w: np.ndarray
    init_b: np.ndarray


def all_features(model, images: np.ndarray) -> np.ndarray:
    """Features of a whole set, cached as float16 beside fedproof's own feature cache."""
    key = hashlib.sha256(repr(model.extractor).encode() + images.tobytes()).hexdigest()[:24]
    path = feature_cache_dir() / f"fleet-{key}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False).astype(np.float32).reshape(len(images), -1)
    out = np.concatenate([features(model, images[i:i + 2000]).numpy() for i in range(0, len(images), 2000)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out.astype(np.float16), allow_pickle=False)
    return out.reshape(len(images), -1)


def normalized(feats: np.ndarray, groups: int = 27) -> np.ndarray:
    """The head's fixed GroupNorm (no affine part), applied once: the linear layer's inputs."""
    g = feats.reshape(len(feats), groups, -1)
    g = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + 1e-5)
    return g.reshape(len(feats), -1).astype(np.float32)


def load_fleet(clients: int, alpha: float = 0.5, seed: int = 42) -> Fleet:
    config = RunConfig(clients=clients, partition="dirichlet", alpha=alpha, seed=seed, ledger=False, he=False)
    task = load_task(config.task)
    dataset = task_dataset(config.task, None)
    model = task.model(config.model, dataset.num_classes, seed=seed)
    train = normalized(all_features(model, dataset.train_x))
    xs, ys = [], []
    for pid in range(clients):
        data = load_client_data(config, pid, clients)
        # the device's training rows: locate them in the full set by content (load_client_data copies them)
        xs.append(_rows(dataset.train_x, data.train_x, train))
        ys.append(data.train_y.astype(np.int64))
    test = normalized(all_features(model, dataset.test_x))
    head = model.head[-1]
    return Fleet(xs, ys, test, dataset.test_y.astype(np.int64), head.weight.detach().numpy().copy(),
                 head.bias.detach().numpy().copy())


_ROW_INDEX: dict[int, dict[bytes, int]] = {}


def _rows(all_images: np.ndarray, images: np.ndarray, feats: np.ndarray) -> np.ndarray:
    table = _ROW_INDEX.setdefault(id(all_images), {img.tobytes(): i for i, img in enumerate(all_images)})
    return feats[[table[img.tobytes()] for img in images]]


def _softmax_grad(w, b, x, y):
    logits = x @ w.T + b
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    return p.T @ x, p.sum(0)


def local_update(w, b, x, y, lr: float, epochs: int, batch: int, momentum: float, rng) -> np.ndarray:
    """What ``train_plain`` does to the head: SGD with momentum over shuffled batches; the flat update."""
    w0, b0 = w, b
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            i = order[s:s + batch]
            gw, gb = _softmax_grad(w, b, x[i], y[i])
            vw, vb = momentum * vw + gw, momentum * vb + gb
            w, b = w - lr * vw, b - lr * vb
    return np.concatenate([(w - w0).ravel(), b - b0])


def accuracy(w, b, fleet: Fleet) -> float:
    return float(((fleet.test_x @ w.T + b).argmax(1) == fleet.test_y).mean())


@dataclass(frozen=True)
class Setting:
    name: str
    sigma: float
    """Noise multiplier (0: no DP)."""
    noise: str = "distributed"
    """``central`` (the server adds it) or ``distributed`` (shares, floor - colluders of them make sigma)."""
    adaptive: bool = False
    floor: int = 80
    colluders: int = 0


def run(fleet: Fleet, setting: Setting, *, rounds: int, q: float, clip: float, lr: float, epochs: int, batch: int,
        server_lr: float, server_momentum: float, seed: int = 0, target_quantile: float = 0.5,
        clip_lr: float = 0.2, count_noise: float = 5.0) -> tuple[float, float]:
    """Final test accuracy, and the final clip. With adaptive clipping, as ``privacy.user_dp`` splits it: the
    updates' noise multiplier is Andrew et al.'s z_Delta = (sigma^-2 - (2 count_noise)^-2)^-1/2, the count gets
    noise ``count_noise``, and the share of unclipped updates is over the round's contributors."""
    rng = np.random.default_rng(seed)
    sigma = setting.sigma
    if setting.adaptive and sigma:
        sigma = (sigma ** -2 - (2 * count_noise) ** -2) ** -0.5
    w, b = fleet.init_w.copy(), fleet.init_b.copy()
    shape = w.shape
    velocity = np.zeros(w.size + b.size)
    n = len(fleet.y)
    for _ in range(rounds):
        chosen = np.flatnonzero(rng.random(n) < q)
        total = np.zeros_like(velocity)
        within = 0.0
        for k in chosen:
            delta = local_update(w, b, fleet.x[k], fleet.y[k], lr, epochs, batch, 0.9, rng)
            norm = float(np.linalg.norm(delta))
            within += norm <= clip
            if setting.sigma:
                delta = delta * min(1.0, clip / max(norm, 1e-12))
                if setting.noise == "distributed":
                    delta = delta + rng.normal(0, sigma * clip / np.sqrt(setting.floor - setting.colluders),
                                               delta.size)
            total += delta
        if setting.sigma and setting.noise == "central":
            total += rng.normal(0, sigma * clip, total.size)
        if setting.sigma and len(chosen) < setting.floor and setting.noise == "distributed":
            continue  # the decryptors refuse a sum below the floor: the round is void
        mean = total / max(q * n, 1.0)
        velocity = server_momentum * velocity + mean
        step = server_lr * velocity
        w, b = w + step[:w.size].reshape(shape), b + step[w.size:]
        if setting.adaptive and setting.sigma:
            noisy = within + rng.normal(0, count_noise)
            clip *= float(np.exp(-clip_lr * (noisy / max(len(chosen), 1) - target_quantile)))
            clip = min(1.0, max(0.01, clip))  # a default device policy's bounds, as the server keeps it
    return accuracy(w, b, fleet), clip


if __name__ == "__main__":
    import argparse
    import time

    from privacy.user_dp import calibrate_user_noise

    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--q", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-momentum", type=float, default=0.9)
    p.add_argument("--floor", type=int, default=80)
    p.add_argument("--only", default="")
    a = p.parse_args()
    t = time.time()
    fleet = load_fleet(a.clients)
    print(f"fleet loaded in {time.time() - t:.0f} s", flush=True)
    sigma = calibrate_user_noise(3.0, 1e-5, a.q, a.rounds)
    settings = [Setting("no DP", 0.0), Setting("central", sigma, "central"),
                Setting("distributed", sigma, floor=a.floor),
                Setting("distributed adaptive", sigma, adaptive=True, floor=a.floor)]
    for s in settings:
        if a.only and a.only not in s.name:
            continue
        t = time.time()
        acc, clip = run(fleet, s, rounds=a.rounds, q=a.q, clip=a.clip, lr=a.lr, epochs=a.epochs, batch=a.batch,
                        server_lr=a.server_lr, server_momentum=a.server_momentum)
        print(f"{s.name:22s} sigma {s.sigma:.3f}  acc {acc:.4f}  clip {clip:.3f}  ({time.time() - t:.0f} s)", flush=True)
