"""A data holder's own records, in the formats people have: CSV and Parquet tables, image folders, NumPy ``.npz``.

Every loader reads what the task's :class:`RecordSpec` says one record is, checks size and format before it
decodes anything (the data folder is the device's, but its files may come from anywhere), and raises a typed
:class:`~fedproof.base.errors.DataError` that says what to fix. None unpickles: ``.npz`` loads with
``allow_pickle=False``, images through Pillow with its decompression-bomb limit lowered to what a record can be.

The path comes from the device (``fedproof client --data PATH``), never from the server.
"""

from __future__ import annotations

import csv
import io
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedproof.base.errors import DataError, DataIntegrityError, DatasetNotFoundError
from fedproof.base.files import read_bounded

MAX_FILE_BYTES = 1 << 30
"""Largest single data file read (a table, an .npz, one image)."""
MAX_IMAGE_PIXELS = 16 << 20
"""Largest image (width x height) decoded: larger ones are refused before their pixels are (a bomb)."""
MAX_RECORDS = 10_000_000
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".npz": "npz"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SchemaError(DataError):
    """The records are readable but not what the task takes: a missing column, a wrong type, a wrong shape."""


@dataclass(frozen=True)
class RecordSpec:
    """One raw record as a device holds it and the exported graph takes it.

    - images: ``shape`` (height, width), ``dtype`` "uint8", ``classes`` the folder names of an image folder;
    - tables: ``shape`` (number of feature columns,), ``dtype`` "float32", ``columns`` the feature columns in
      order, ``label`` the label column (its values: class indices, or ``classes`` names).
    """

    shape: tuple[int, ...]
    dtype: str
    columns: tuple[str, ...] = ()
    label: str = "label"
    classes: tuple[str, ...] = field(default=())

    @property
    def is_table(self) -> bool:
        return bool(self.columns)


def load_records(path: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(records, int64 labels) from ``path``: a ``.csv``, ``.parquet`` or ``.npz`` file, or a folder of images
    with one sub-folder per class. A symlink that leaves ``path`` is refused."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or folder (pass this device's data with --data PATH)")
    if path.is_dir():
        return load_image_folder(path, spec, max_bytes)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: not a data file fedproof reads (.csv, .parquet, .npz, or a folder of class "
                        "folders of PNG/JPEG images)")
    if kind == "npz":
        return load_npz(path, spec, max_bytes)
    if not spec.is_table:
        raise SchemaError(f"{path}: a table, but this task takes images ({spec.shape}); give a folder of images")
    return load_csv(path, spec, max_bytes) if kind == "csv" else load_parquet(path, spec, max_bytes)


def _labels(values: list, spec: RecordSpec, origin: str) -> np.ndarray:
    if spec.classes:
        index = {name: i for i, name in enumerate(spec.classes)}
        try:
            return np.array([index[str(v)] if str(v) in index else int(v) for v in values], np.int64)
        except (ValueError, TypeError):
            bad = next(v for v in values if str(v) not in index)
            raise SchemaError(f"{origin}: label {bad!r} is none of {', '.join(spec.classes)}") from None
    try:
        labels = np.array([int(float(v)) for v in values], np.int64)
    except (ValueError, TypeError):
        raise SchemaError(f"{origin}: the label column {spec.label!r} holds a value that is not a class number") \
            from None
    return labels


def _table(columns: dict[str, list], spec: RecordSpec, origin: str, labelled: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in (*spec.columns, *((spec.label,) if labelled else ())) if c not in columns]
    if missing:
        raise SchemaError(f"{origin}: missing column(s) {', '.join(missing)}; the task reads "
                          f"{', '.join(spec.columns)} and the label {spec.label!r}")
    try:
        x = np.array([[float(v) for v in columns[c]] for c in spec.columns], np.float64).T
    except (ValueError, TypeError):
        column = next(c for c in spec.columns if not _numeric(columns[c]))
        raise SchemaError(f"{origin}: column {column!r} holds a value that is not a number") from None
    if not np.isfinite(x).all():
        raise SchemaError(f"{origin}: a feature is missing or not finite (NaN, inf): clean the rows first")
    labels = _labels(columns[spec.label], spec, origin) if labelled else np.zeros(len(x), np.int64)
    return x.astype(np.float32).reshape(len(x), len(spec.columns)), labels


def _numeric(values: list) -> bool:
    try:
        [float(v) for v in values]
    except (ValueError, TypeError):
        return False
    return True


def load_rows(path: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """A table's feature rows without labels (what a deployed model is asked about): a .csv or .parquet file."""
    path = Path(path).expanduser()
    kind = SUFFIXES.get(path.suffix.lower())
    if kind not in ("csv", "parquet"):
        raise DataError(f"{path}: give table rows as a .csv or .parquet file with a header naming the columns")
    load = load_csv if kind == "csv" else load_parquet
    return load(path, spec, max_bytes, labelled=False)[0]


def load_csv(path: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES, labelled: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    text = read_bounded(path, max_bytes, "data file", DataIntegrityError)
    try:
        rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataIntegrityError(f"{path}: not a UTF-8 CSV file ({exc})") from exc
    if not rows:
        raise SchemaError(f"{path}: empty; expected a header row naming the columns")
    header, body = rows[0], [r for r in rows[1:] if r]
    if len(body) > MAX_RECORDS:
        raise DataIntegrityError(f"{path}: more than {MAX_RECORDS} rows")
    if any(len(r) != len(header) for r in body):
        line = next(i for i, r in enumerate(rows[1:], 2) if r and len(r) != len(header))
        raise SchemaError(f"{path}: line {line} has a different number of fields than the header")
    columns = {name: [r[i] for r in body] for i, name in enumerate(header)}
    return _table(columns, spec, str(path), labelled)


def load_parquet(path: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES, labelled: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = read_bounded(path, max_bytes, "data file", DataIntegrityError)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = set(parquet.schema_arrow.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataIntegrityError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    wanted = [*spec.columns, *((spec.label,) if labelled else ())]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {', '.join(missing)}; the task reads "
                          f"{', '.join(spec.columns)} and the label {spec.label!r}")
    if parquet.metadata.num_rows > MAX_RECORDS:
        raise DataIntegrityError(f"{path}: more than {MAX_RECORDS} rows")
    try:
        table = parquet.read(columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataIntegrityError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    return _table({name: table.column(name).to_pylist() for name in table.column_names}, spec, str(path), labelled)


def load_npz(path: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """An ``.npz`` with arrays ``x`` (records) and ``y`` (labels); never unpickled."""
    data = read_bounded(path, max_bytes, "data file", DataIntegrityError)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(i.file_size for i in archive.infolist())
        if unpacked > max_bytes:
            raise DataIntegrityError(f"{path}: unpacks to {unpacked} bytes, over the {max_bytes}-byte limit")
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if not {"x", "y"} <= set(archive.files):
                raise SchemaError(f"{path}: an .npz needs arrays 'x' (records) and 'y' (labels); it holds "
                                  f"{', '.join(archive.files) or 'none'}")
            x, y = archive["x"], archive["y"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataIntegrityError(f"{path}: not a readable .npz without pickled objects ({exc})") from exc
    if tuple(x.shape[1:]) != spec.shape or len(x) != len(y) or y.ndim != 1:
        raise SchemaError(f"{path}: x is {x.shape} and y {y.shape}; the task takes (n, {', '.join(map(str, spec.shape))})"
                          " records with n labels")
    if x.dtype.kind not in "iuf" or y.dtype.kind not in "iu":
        raise SchemaError(f"{path}: x must be numbers and y class numbers, got {x.dtype} and {y.dtype}")
    x = x.astype(spec.dtype)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise SchemaError(f"{path}: a record holds NaN or inf")
    return x, y.astype(np.int64)


def load_image_folder(root: Path, spec: RecordSpec, max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """One sub-folder per class (named as the task's classes, or 0..C-1), PNG or JPEG images in each, converted to
    grayscale and the task's size. Files whose real path leaves ``root`` (symlinks) are refused."""
    from PIL import Image

    if spec.is_table or len(spec.shape) != 2:
        raise SchemaError(f"{root}: a folder of images, but this task takes table rows; give a .csv or .parquet")
    base = root.resolve()
    names = spec.classes or tuple(str(i) for i in range(1 << 16))
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in names]
    if unknown:
        raise SchemaError(f"{root}: folder(s) {', '.join(unknown[:5])} name no class of this task "
                          f"({', '.join(spec.classes) or '0, 1, ...'})")
    records, labels = [], []
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    for folder in folders:
        label = names.index(folder.name)
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            real = path.resolve()
            if base not in real.parents:
                raise DataIntegrityError(f"{path}: a link out of the data folder {root}; copy the file in instead")
            data = read_bounded(real, max_bytes, "image", DataIntegrityError)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    image = Image.open(io.BytesIO(data))
                    width, height = image.size
                    if width * height > MAX_IMAGE_PIXELS:
                        raise DataIntegrityError(f"{path}: {width} x {height} pixels, over the {MAX_IMAGE_PIXELS}-pixel "
                                                 "limit (a decompression bomb, or the wrong file)")
                    gray = image.convert("L").resize((spec.shape[1], spec.shape[0]))
                    records.append(np.asarray(gray, np.uint8))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise DataIntegrityError(f"{path}: over the {MAX_IMAGE_PIXELS}-pixel limit (a decompression bomb, or "
                                         f"the wrong file): {exc}") from exc
            except (OSError, ValueError) as exc:
                raise DataIntegrityError(f"{path}: not a readable PNG or JPEG image ({exc})") from exc
            labels.append(label)
            if len(records) > MAX_RECORDS:
                raise DataIntegrityError(f"{root}: more than {MAX_RECORDS} images")
    if not records:
        raise SchemaError(f"{root}: no PNG or JPEG images in class folders")
    return np.stack(records), np.array(labels, np.int64)

