"""Edge deployment: fp32 torch against fp32 and static-int8 onnxruntime, measured in one run.

Sizes of the files a device would receive, latency per batch of 1 and of 256 on one thread (best and
median of repeated runs), and accuracy on the full Fashion-MNIST test set; ratios against fp32 torch.
The model is a run's final model (--model runs/<id>/model.safetensors) or, by default, the demo's CNN
trained here for two epochs without DP.

    python benchmarks/deploy.py [--model FILE] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from fedproof.core.data import load_dataset
from fedproof.core.inference import predict, session
from fedproof.core.model import make_model
from fedproof.core.features import features, to_tensors
from fedproof.core.artifact import calibration_bytes, derive, graph_name
from fl_server.deploy import load_model_file


def train(data, epochs: int = 2) -> torch.nn.Module:
    """The default model, its head trained (no DP) on its features of the training set."""
    torch.manual_seed(0)
    model = make_model(num_classes=data.num_classes)
    x, y = features(model, data.train_x), torch.from_numpy(data.train_y.astype(np.int64))
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model.head(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="safetensors model file (default: train one here)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset()
    model = load_model_file(args.model)[0] if args.model else train(data)
    fp32_torch = safetensors_save(model.state_dict())
    calibration = data.train_x[np.random.default_rng(0).choice(len(data.train_x), 512, replace=False)]
    fp32, int8 = derive(graph_name("scatternet", data.num_classes), fp32_torch, calibration_bytes(calibration), True)
    x_test, _ = to_tensors(data.test_x, data.test_y)

    def torch_predict(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(images).argmax(1).numpy()

    rows = []
    variants = [("fp32 torch (eager)", fp32_torch, lambda imgs, t: torch_predict(t)),
                ("fp32 onnxruntime", fp32, None), ("int8 onnxruntime (static QDQ)", int8, None)]
    reference = torch_predict(x_test)
    for name, blob, runner in variants:
        if runner is None:
            sess = session(blob)
            runner = lambda imgs, t, sess=sess: predict(sess, imgs, 1024)  # noqa: E731
        labels = runner(data.test_x, x_test)
        latency = {b: timed(lambda b=b: runner(data.test_x[:b], x_test[:b]), args.repeats) for b in (1, 256)}
        rows.append((name, len(blob), latency, float((labels == data.test_y).mean()),
                     float((labels == reference).mean())))
    base_size, base_lat = rows[0][1], rows[0][2]
    print("\nEdge model: sizes, latency (1 thread) and test accuracy; ratios against fp32 torch\n")
    print("| model | bytes | x fp32 torch | batch 1 ms (best / median) | x | batch 256 ms (best / median) | x | "
          "test accuracy | argmax agreement with fp32 torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, lat, acc, agree in rows:
        cells = [name, f"{size:,}", f"{size / base_size:.3f}"]
        for b in (1, 256):
            best, median = lat[b]
            cells += [f"{best * 1e3:.2f} / {median * 1e3:.2f}", f"{best / base_lat[b][0]:.2f}"]
        cells += [f"{acc:.4f}", f"{100 * agree:.2f}%"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
