"""Fashion-MNIST: 28 x 28 grayscale images of 10 kinds of clothing (the demo's task).

Its models are :mod:`fedproof.core.model`'s (the wavelet-scattering network by default); its records come from
Debian's ``dataset-fashion-mnist`` or any IDX dataset (:mod:`fedproof.core.data`); a device may bring its own
images as a folder of class folders ``0`` .. ``9``, or an ``.npz``.
"""

from __future__ import annotations

from fedproof.core.data import Dataset, load_dataset
from fedproof.core.loaders import RecordSpec
from fedproof.core.model import ExtractorHead, make_model
from fedproof.core.task import Task


class FashionMNIST(Task):
    name = "fashion-mnist"
    record = RecordSpec(shape=(28, 28), dtype="uint8")
    models = ("scatternet", "cnn")
    num_classes = 10

    def build(self, model: str, num_classes: int) -> ExtractorHead:
        return make_model(model, num_classes)

    def dataset(self, data_dir: str | None) -> Dataset:
        return load_dataset(data_dir or None)
