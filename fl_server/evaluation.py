"""Central evaluation of the global model on the held-out test set, on the server."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedproof.core.data import Dataset
from fedproof.core.features import evaluate
from fedproof.core.model import ExtractorHead


class CentralEvaluator:
    """Evaluates global weights on ``dataset``'s test split; returns (loss, accuracy)."""

    def __init__(self, dataset: Dataset, model: ExtractorHead) -> None:
        self.dataset = dataset
        self.model = model

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(self.model, self.dataset.test_x, self.dataset.test_y)
