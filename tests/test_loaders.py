"""A device's own records in the formats people have: good files load; every bad one gets its typed error."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedproof.base.errors import DataError, DataIntegrityError, DatasetNotFoundError
from fedproof.core.loaders import RecordSpec, SchemaError, load_records

TABLE = RecordSpec(shape=(2,), dtype="float32", columns=("age", "dose"), label="outcome", classes=("no", "yes"))
IMAGES = RecordSpec(shape=(8, 8), dtype="uint8", classes=("cat", "dog"))


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_loads_by_column_name_whatever_the_order_and_with_named_or_numbered_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rows.csv", "outcome,site,dose,age\nyes,a,1.5,40\nno,b,0.5,61\n1,c,2,33\n")
    x, y = load_records(path, TABLE)
    assert x.dtype == np.float32 and x.tolist() == [[40, 1.5], [61, 0.5], [33, 2]]
    assert y.tolist() == [1, 0, 1]


@pytest.mark.parametrize("text, error, words", [
    ("age,outcome\n40,yes\n", SchemaError, "missing column(s) dose"),
    ("age,dose,outcome\nforty,1,yes\n", SchemaError, "'age' holds a value that is not a number"),
    ("age,dose,outcome\n40,,yes\n", SchemaError, "not a number"),
    ("age,dose,outcome\n40,1,maybe\n", SchemaError, "label 'maybe' is none of no, yes"),
    ("age,dose,outcome\n40,1\n", SchemaError, "line 2 has a different number of fields"),
    ("age,dose,outcome\nnan,1,yes\n", SchemaError, "NaN"),
    ("", SchemaError, "empty"),
])
def test_a_bad_csv_gets_a_typed_error_that_says_what_to_fix(tmp_path: Path, text: str, error, words: str) -> None:
    with pytest.raises(error) as caught:
        load_records(write_csv(tmp_path / "rows.csv", text), TABLE)
    assert words in str(caught.value)


def test_parquet_loads_and_a_truncated_or_incomplete_one_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"age": [40.0, 61.0], "dose": [1.5, 0.5], "outcome": ["yes", "no"]}), good)
    x, y = load_records(good, TABLE)
    assert x.tolist() == [[40, 1.5], [61, 0.5]] and y.tolist() == [1, 0]
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataIntegrityError, match="not a readable Parquet file"):
        load_records(truncated, TABLE)
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"age": [40.0], "outcome": ["yes"]}), missing)
    with pytest.raises(SchemaError, match="missing column"):
        load_records(missing, TABLE)
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"age": ["forty"], "dose": [1.0], "outcome": ["yes"]}), typed)
    with pytest.raises(SchemaError, match="not a number"):
        load_records(typed, TABLE)


def test_npz_loads_without_pickle_and_refuses_objects_and_wrong_shapes(tmp_path: Path) -> None:
    good = tmp_path / "rows.npz"
    np.savez(good, x=np.array([[1, 2], [3, 4]], np.float64), y=np.array([0, 1]))
    x, y = load_records(good, TABLE)
    assert x.dtype == np.float32 and y.tolist() == [0, 1]
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataIntegrityError, match="without pickled objects"):
        load_records(pickled, TABLE)
    shaped = tmp_path / "shape.npz"
    np.savez(shaped, x=np.zeros((2, 3)), y=np.array([0, 1]))
    with pytest.raises(SchemaError, match=r"\(n, 2\) records"):
        load_records(shaped, TABLE)
    named = tmp_path / "named.npz"
    np.savez(named, features=np.zeros((2, 2)), y=np.array([0, 1]))
    with pytest.raises(SchemaError, match="needs arrays 'x'"):
        load_records(named, TABLE)
    bomb = tmp_path / "bomb.npz"  # small on disk, huge unpacked
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((4096, 4096), np.float32))
        archive.writestr("x.npy", buffer.getvalue())
        archive.writestr("y.npy", buffer.getvalue()[:200])
    with pytest.raises(DataIntegrityError, match="unpacks to"):
        load_records(bomb, TABLE, max_bytes=1 << 20)


def image_folder(root: Path) -> Path:
    for label, shade in (("cat", 30), ("dog", 220)):
        (root / label).mkdir(parents=True)
        Image.new("L", (16, 16), shade).save(root / label / "a.png")
        Image.new("RGB", (20, 10), (shade, shade, shade)).save(root / label / "b.jpg")
    return root


def test_an_image_folder_loads_grayscale_at_the_tasks_size(tmp_path: Path) -> None:
    x, y = load_records(image_folder(tmp_path / "images"), IMAGES)
    assert x.shape == (4, 8, 8) and x.dtype == np.uint8 and y.tolist() == [0, 0, 1, 1]
    assert x[0].mean() < 40 and x[2].mean() > 200


def test_an_image_bomb_a_link_out_and_an_unknown_class_are_refused(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images")
    Image.new("1", (5000, 5000)).save(root / "cat" / "huge.png")  # 25 M pixels in a few KB
    with pytest.raises(DataIntegrityError, match="pixel"):
        load_records(root, IMAGES)
    (root / "cat" / "huge.png").unlink()
    outside = tmp_path / "secret.png"
    Image.new("L", (8, 8)).save(outside)
    (root / "dog" / "link.png").symlink_to(outside)
    with pytest.raises(DataIntegrityError, match="a link out of the data folder"):
        load_records(root, IMAGES)
    (root / "dog" / "link.png").unlink()
    (root / "cow").mkdir()
    with pytest.raises(SchemaError, match="cow"):
        load_records(root, IMAGES)
    (root / "cow").rmdir()
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataIntegrityError, match="not a readable PNG or JPEG"):
        load_records(root, IMAGES)


def test_an_oversized_missing_or_unknown_file_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rows.csv", "age,dose,outcome\n" + "40,1,yes\n" * 1000)
    with pytest.raises(DataIntegrityError, match="data file"):
        load_records(path, TABLE, max_bytes=1000)
    with pytest.raises(DatasetNotFoundError, match="--data PATH"):
        load_records(tmp_path / "absent.csv", TABLE)
    with pytest.raises(DataError, match="not a data file fedproof reads"):
        load_records(write_csv(tmp_path / "rows.xlsx", "x"), TABLE)
    with pytest.raises(SchemaError, match="this task takes images"):
        load_records(path, IMAGES)
