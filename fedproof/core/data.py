"""Fashion-MNIST (and any IDX dataset) read with numpy alone: no pickle, no download at run time.

Files are looked for, in order, in ``$FEDPROOF_DATA_DIR``, ``/usr/share/datasets/fashion-mnist`` (Debian's
package ``dataset-fashion-mnist``) and ``~/.cache/fedproof/fashion-mnist``; each may be gzipped or not.
Every file is checked against the SHA-256 of its *decompressed* IDX bytes, so the official ``.gz``
files, Debian's recompressed ones and unpacked copies all verify alike, and a corrupt or substituted file
is refused before anything trains on it.

A directory may instead describe its own IDX dataset in a ``dataset.json`` (see :func:`write_manifest`);
its files are then checked against the hashes listed there. Tests use this for small generated data.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedproof.base.errors import DataIntegrityError, DatasetNotFoundError

#: IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_DTYPE = {dt: code for code, dt in _IDX_DTYPES.items()}

#: Refuse IDX payloads above this size (a decompression bomb or the wrong file); Fashion-MNIST's largest
#: file is 47 MB unpacked.
MAX_IDX_BYTES = 512 * 1024 * 1024

SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DATA_DIR = Path("~/.cache/fedproof/fashion-mnist")
MANIFEST_NAME = "dataset.json"

INSTALL_HINT = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
    "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into "
    f"{CACHE_DATA_DIR}, or point $FEDPROOF_DATA_DIR at a directory holding them."
)


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset: its name on disk (without ``.gz``) and the SHA-256 of its IDX bytes."""

    name: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset's four IDX files are called and what they must hash to."""

    name: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    num_classes: int = 10

    @property
    def files(self) -> tuple[IdxFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    train_images=IdxFile(
        "train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
)


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: uint8 images ``(n, 28, 28)`` and int64 labels, train and test."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: Path
    identity: str = ""
    """SHA-256 over the training files' own SHA-256s: which records these are (a privacy budget is kept per
    dataset, whatever partition of it a run trains on)."""


# --------------------------------------------------------------------------------------------- IDX format
def read_idx_bytes(path: Path, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Return the IDX bytes of ``path`` (decompressing ``.gz``), refusing more than ``max_bytes``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        else:
            if path.stat().st_size > max_bytes:
                raise DataIntegrityError(f"{path}: larger than the {max_bytes}-byte limit for IDX files")
            data = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataIntegrityError(f"{path}: cannot read ({exc}); the file is damaged, fetch it again") from exc
    if len(data) > max_bytes:
        raise DataIntegrityError(f"{path}: larger than the {max_bytes}-byte limit for IDX files")
    return data


MAX_IDX_DIMENSIONS = 16
"""More than any image or label set has (numpy itself stops at 64)."""


def gunzip_bounded(data: bytes, max_bytes: int, origin: str = "<bytes>") -> bytes:
    """Decompress gzip ``data`` (one member or several, as gzip allows) without ever holding more than
    ``max_bytes + 1`` bytes of output: a small file that expands to gigabytes is refused as it expands."""
    out, rest = bytearray(), bytes(data)
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise DataIntegrityError(f"{origin}: not a valid gzip stream ({exc})") from exc
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise DataIntegrityError(f"{origin}: decompresses to more than the {max_bytes}-byte limit")
        if not inflater.eof:
            raise DataIntegrityError(f"{origin}: truncated gzip stream")
        rest = inflater.unused_data
    return bytes(out)


def parse_idx(data: bytes, origin: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload length exactly."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataIntegrityError(f"{origin}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataIntegrityError(f"{origin}: unknown IDX element type 0x{code:02x}")
    if not 1 <= ndim <= MAX_IDX_DIMENSIONS:
        raise DataIntegrityError(f"{origin}: IDX header declares {ndim} dimensions (1..{MAX_IDX_DIMENSIONS})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataIntegrityError(f"{origin}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # exact: a product of huge dimensions must not wrap
    actual = len(data) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise DataIntegrityError(
            f"{origin}: {kind}: header {shape} needs {expected} payload bytes, file has {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (used to write manifests' files and test data)."""
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big not in _CODE_OF_DTYPE:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, _CODE_OF_DTYPE[big], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=big).tobytes()


def read_idx(path: Path, sha256: str | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX(.gz) file, verifying the SHA-256 of its IDX bytes when ``sha256`` is given."""
    data = read_idx_bytes(path, max_bytes)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DataIntegrityError(
                f"{path}: SHA-256 {digest} does not match the expected {sha256}; the file is corrupt or "
                "not the file it claims to be. Delete it and fetch it again."
            )
    return parse_idx(data, str(path))


# ------------------------------------------------------------------------------------------ locating data
def search_path(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for the data, in order. An explicit ``data_dir`` is the only one searched."""
    if data_dir:
        return [Path(data_dir).expanduser()]
    dirs = [Path(env).expanduser()] if (env := os.environ.get("FEDPROOF_DATA_DIR")) else []
    return [*dirs, SYSTEM_DATA_DIR, CACHE_DATA_DIR.expanduser()]


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def spec_for(directory: Path) -> DatasetSpec:
    """The dataset a directory declares in its ``dataset.json``, else Fashion-MNIST."""
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return FASHION_MNIST
    try:
        raw = json.loads(manifest.read_text())
        return DatasetSpec(
            name=str(raw["name"]),
            num_classes=int(raw["num_classes"]),
            **{key: IdxFile(**raw["files"][key]) for key in ("train_images", "train_labels", "test_images", "test_labels")},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataIntegrityError(f"{manifest}: not a valid dataset manifest ({exc})") from exc


def locate(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, DatasetSpec]:
    """Find the first searched directory that holds all four files of its dataset."""
    searched = search_path(data_dir)
    for directory in searched:
        spec = spec_for(directory) if directory.is_dir() else FASHION_MNIST
        if all(_find(directory, f.name) for f in spec.files):
            return directory, spec
    where = ", ".join(str(d) for d in searched)
    raise DatasetNotFoundError(f"Fashion-MNIST not found (searched: {where}). {INSTALL_HINT}")


@functools.lru_cache(maxsize=2)
def _load(directory: Path, spec: DatasetSpec) -> Dataset:
    def read(f: IdxFile) -> np.ndarray:
        path = _find(directory, f.name)
        assert path is not None  # locate() checked
        return read_idx(path, f.sha256)

    train_x, train_y = read(spec.train_images), read(spec.train_labels)
    test_x, test_y = read(spec.test_images), read(spec.test_labels)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataIntegrityError(
                f"{directory}: {split} images {x.shape} and labels {y.shape} do not form a dataset of "
                "(n, height, width) images with n labels"
            )
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DataIntegrityError(f"{directory}: {split} labels outside 0..{spec.num_classes - 1}")
    return Dataset(
        name=spec.name,
        train_x=train_x,
        train_y=train_y.astype(np.int64),
        test_x=test_x,
        test_y=test_y.astype(np.int64),
        num_classes=spec.num_classes,
        source=directory,
        identity=hashlib.sha256(f"{spec.train_images.sha256}:{spec.train_labels.sha256}".encode()).hexdigest(),
    )


def load_dataset(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Locate, verify and load the dataset (cached per process: clients call this every round)."""
    directory, spec = locate(data_dir)
    return _load(directory.resolve(), spec)


def write_manifest(directory: Path, name: str, num_classes: int, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (keys ``train_images``, ``train_labels``, ``test_images``, ``test_labels``) as
    gzipped IDX files plus a ``dataset.json`` that pins their hashes: a self-describing IDX dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, array in arrays.items():
        data = encode_idx(array)
        file_name = key.replace("_", "-") + "-idx"
        (directory / f"{file_name}.gz").write_bytes(gzip.compress(data, mtime=0))
        files[key] = {"name": file_name, "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"name": name, "num_classes": num_classes, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
