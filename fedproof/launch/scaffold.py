"""``fedproof new``: a Flower app project that trains the user's own task with everything fedproof adds.

The project is what ``flwr new`` makes, pointed at fedproof: a ``pyproject.toml`` whose ``[tool.flwr.app]`` names
fedproof's ServerApp and ClientApp and whose config names the project's task, and a ``task.py`` to edit (records,
model, statistics). ``flwr build`` packages it; ``fedproof simulate --app DIR`` runs it on this machine,
``fedproof provision --app DIR`` pins its FAB in every kit, and each device runs it with ``fedproof client --app DIR``
(its own installed copy, checked against the pin).

The settings are every run setting fedproof has, at its defaults (Flower accepts ``-c`` overrides only of keys an
app declares), with the task's own where a template needs them.
"""

from __future__ import annotations

import csv
import re
import tomllib
from pathlib import Path

import numpy as np

from fedproof.base.errors import ConfigError
from fedproof.core.config import RunConfig, Scalar

TEMPLATES = ("tabular", "image")

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.1.0"
description = "A federated task trained with fedproof: DP, threshold HE, signed lineage"
requires-python = ">=3.11"
dependencies = ["fedproof"]

[tool.hatch.build.targets.wheel]
packages = ["{package}"]

[tool.flwr.app]
publisher = "{name}"

# fedproof's own apps; they train the task named in the config below
[tool.flwr.app.components]
serverapp = "fl_server.server_app:app"
clientapp = "fl_client.client_app:app"

[tool.flwr.app.config]
{config}
"""

TABULAR_TASK = '''\
"""{title}: the records, the model and the data of this federation. Edit the columns, the label and its classes
to match your table; the statistics standardise each feature inside the model (so devices send raw rows).

Each device trains on its own CSV or Parquet file: `fedproof client --app . --data its-rows.csv`.
A simulation on this machine splits `data/records.csv` among its clients: `fedproof simulate --app .`.
"""

from fedproof.core.loaders import RecordSpec
from fedproof.core.tasks.table import TableTask


class {cls}(TableTask):
    name = "{name}"
    record = RecordSpec(
        shape=({width},),
        dtype="float32",
        columns={columns!r},
        label={label!r},
        classes={classes!r},
    )
    # Reference statistics of each column (shared constants, the same on every party: never one device's rows).
    mean = {mean!r}
    std = {std!r}
    # "mlp" (default) or "logistic"; its hidden width:
    hidden = 16
    simulation_csv = "../data/records.csv"
'''

IMAGE_TASK = '''\
"""{title}: the records, the model and the data of this federation. Edit the classes and the image size; pixels are
scaled and standardised inside the model (so devices send raw images).

Each device trains on its own images, one folder per class: `fedproof client --app . --data its-images/`.
A simulation on this machine splits `data/images/` among its clients: `fedproof simulate --app .`.
"""

from fedproof.core.loaders import RecordSpec
from fedproof.core.tasks.images import ImageTask


class {cls}(ImageTask):
    name = "{name}"
    record = RecordSpec(shape=({height}, {width}), dtype="uint8", classes={classes!r})
    pixel_mean = 0.5
    pixel_std = 0.25
    simulation_folder = "../data/images"
'''

README = """\
# {name}

A federated task trained with [fedproof](https://example.invalid/fedproof): each data holder's records stay on its
device, training is differentially private under the device's own policy, updates are aggregated under threshold
homomorphic encryption, and every round's lineage is signed and recorded on a ledger.

- `{package}/task.py`: the records (columns or image size, classes), the model, the reference statistics;
- `data/`: records for a simulation on one machine (replace with a sample you may share, or public reference data);
- `pyproject.toml`: the Flower app (fedproof's ServerApp and ClientApp) and the run's settings.

```
fedproof simulate --app .                 # every client on this machine
flwr build                                # the FAB the operator pins
fedproof provision --app . --server-host HOST --identity ...   # kits that pin this app
fedproof client --app . --kit KIT --identity ID --data my-rows.csv   # on each device
```
"""


def _names(name: str) -> tuple[str, str, str]:
    """(project name, package, class) for a user's ``name``."""
    project = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not project or not project[0].isalpha():
        raise ConfigError(f"{name!r}: a project name starts with a letter (letters, digits, dashes)")
    package = project.replace("-", "_")
    return project, package, "".join(part.capitalize() for part in project.split("-")) + "Task"


def _toml_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def app_config(task: str, **settings: Scalar) -> str:
    """Every run setting at its default, with the task and ``settings`` given (keys as in pyproject)."""
    mapping = {**RunConfig().to_mapping(), "task": task, **settings}
    return "\n".join(f"{key} = {_toml_value(value)}" for key, value in mapping.items())


def _sample_table(path: Path | None, label: str) -> tuple[tuple[str, ...], tuple[str, ...], list[list[str]]]:
    """The columns, classes and rows of the user's sample CSV, or a small generated table."""
    if path is None:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(300, 3)) * (10.0, 2.0, 0.5) + (50.0, 5.0, 1.0)
        y = (x[:, 0] / 10 + x[:, 1] / 2 + rng.normal(size=300) > 7.5).astype(int)
        rows = [[f"{v:.4g}" for v in r] + [("low", "high")[t]] for r, t in zip(x, y)]
        return ("age", "dose", "marker"), ("low", "high"), rows
    with path.open(newline="", encoding="utf-8-sig") as fh:
        table = list(csv.reader(fh))
    if len(table) < 2 or label not in table[0]:
        raise ConfigError(f"{path}: a CSV with a header row that names the label column {label!r}, and rows")
    header, body = table[0], [r for r in table[1:] if r]
    at = header.index(label)
    columns = tuple(c for i, c in enumerate(header) if i != at)
    classes = tuple(sorted({r[at] for r in body}))
    if len(classes) < 2:
        raise ConfigError(f"{path}: the label column {label!r} holds one class only")
    reordered = [[r[i] for i in range(len(header)) if i != at] + [r[at]] for r in body]
    return columns, classes, reordered


def new_project(directory: Path, name: str, template: str, sample: Path | None = None, label: str = "label"
                ) -> Path:
    """Write a new app project into ``directory / name``; return its path. Refuses to write over anything."""
    if template not in TEMPLATES:
        raise ConfigError(f"template {template!r}: choose {' or '.join(TEMPLATES)}")
    project, package, cls = _names(name)
    root = Path(directory) / project
    if root.exists():
        raise ConfigError(f"{root} exists: choose another name or directory")
    (root / package).mkdir(parents=True)
    (root / "data").mkdir()
    task_ref = f"{package}.task:{cls}"
    if template == "tabular":
        columns, classes, rows = _sample_table(sample, label)
        x = np.array([[float(v) for v in r[:-1]] for r in rows])
        body = TABULAR_TASK.format(title=project, cls=cls, name=project, width=len(columns), columns=columns,
                                   label=label if sample else "outcome", classes=classes,
                                   mean=tuple(round(float(v), 6) for v in x.mean(0)),
                                   std=tuple(round(float(v), 6) for v in x.std(0)))
        with (root / "data" / "records.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*columns, label if sample else "outcome"])
            writer.writerows(rows)
        settings: dict[str, Scalar] = {"clients": 5, "rounds": 10, "batch-size": 32, "max-grad-norm": 1.0,
                                       "lr": 0.5, "delta": 1e-3, "min-contributors": 2}
    else:
        body = IMAGE_TASK.format(title=project, cls=cls, name=project, height=28, width=28, classes=("circle", "bar"))
        _sample_images(root / "data" / "images")
        settings = {"clients": 4, "rounds": 5, "batch-size": 32, "max-grad-norm": 1.0, "lr": 0.5, "delta": 1e-3,
                    "min-contributors": 2}
    (root / package / "__init__.py").write_text(f'"""{project}: a fedproof task."""\n')
    (root / package / "task.py").write_text(body)
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=project, package=package,
                                                          config=app_config(task_ref, **settings)))
    (root / "README.md").write_text(README.format(name=project, package=package))
    tomllib.loads((root / "pyproject.toml").read_text())  # what we wrote parses
    return root


def _sample_images(root: Path, per_class: int = 60) -> None:
    """Two classes of 28 x 28 grayscale PNGs (a disc, a bar) with noise: a stand-in to replace with real images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    for label in ("circle", "bar"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            cy, cx, r = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(4, 8)
            shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if label == "circle" else (np.abs(xx - cx) < r / 3)
            pixels = np.clip(shape * 200 + rng.normal(30, 20, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / label / f"{i:03d}.png")
