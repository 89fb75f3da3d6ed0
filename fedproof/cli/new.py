"""``fedproof new``: scaffold a Flower app project that trains your own task (fedproof.launch.scaffold)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedproof.base.errors import FedproofError
from fedproof.cli.output import console, fail


def new_command(
    name: Annotated[str, typer.Argument(help="The project's name (letters, digits, dashes).")],
    template: Annotated[str, typer.Option(help="tabular (CSV/Parquet rows) or image (folders of PNG/JPEG).")] = "tabular",
    csv: Annotated[Optional[Path], typer.Option(help="tabular: a sample CSV you may share; its header gives the "
                                                     "columns, --label the label column, its rows the statistics "
                                                     "and the simulation's records.")] = None,
    label: Annotated[str, typer.Option(help="tabular with --csv: the label column.")] = "label",
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the project folder.")] = Path("."),
) -> None:
    """Create NAME/: pyproject.toml (fedproof's ServerApp and ClientApp, your task in its config), NAME/task.py to
    edit, and records for a simulation. Then: fedproof simulate --app NAME."""
    from fedproof.launch.scaffold import new_project

    try:
        root = new_project(directory, name, template, csv, label)
    except (FedproofError, OSError, ValueError) as exc:
        raise fail(exc)
    graphs_command(root)  # so that a model of the new project deploys as it is
    package = root.name.replace("-", "_")
    console.print(f"created {root}: edit {root / package / 'task.py'} (then `fedproof graphs --app {root}`), and\n"
                  f"  fedproof simulate --app {root}\n  flwr build --app {root}   (the FAB kits pin)")


def graphs_command(
    app: Annotated[Path, typer.Option(help="The app project (fedproof new) whose task's graphs to write.")] = Path("."),
) -> None:
    """Write the canonical graph of each of the app task's models into APP/graphs (after any change to task.py):
    devices re-derive every deployed artifact from them, and the app's FAB, which the kits pin, covers them."""
    from fedproof.core.config import pyproject_overrides
    from fedproof.launch.simulation import use_app
    from fl_server.deploy import write_app_graphs

    try:
        task = str(pyproject_overrides(app).get("task") or "")
        if not task:
            raise FedproofError(f"{app}/pyproject.toml is not a fedproof app naming its task")
        use_app(app)
        for path in write_app_graphs(app, task):
            console.print(f"wrote {path}")
    except (FedproofError, OSError, ValueError) as exc:
        raise fail(exc)
