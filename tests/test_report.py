"""The demo's tables at 80 columns: every number shown whole (columns left out are named), and plain aligned rows
of every column when the output is not a terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from fedproof.cli.output import privacy_table, rounds_table, show_table
from fedproof.core.rundir import RoundMetrics

ROWS = [RoundMetrics(round=r, accuracy=0.8 + r / 1000, loss=0.5123 - r / 1000, seconds=3.25 + r, train_clients=10,
                     epsilon_max=0.1 * r, val_accuracy=None, upload_bytes_per_param=15.48, rejected_updates=0)
        for r in range(1, 31)]


def render(terminal: bool, draw) -> str:
    out = Console(width=80, force_terminal=terminal, record=True, color_system=None)
    draw(out)
    return out.export_text()


@pytest.mark.parametrize("terminal", [True, False])
def test_no_number_of_the_rounds_table_is_cut(terminal: bool, tmp_path: Path) -> None:
    text = render(terminal, lambda out: rounds_table(ROWS, tmp_path, 99.0, out=out))
    assert "…" not in text
    for r in ROWS:  # the first columns, which every width keeps
        assert re.search(rf"\b{r.round}\b.*{r.accuracy:.4f}.*{r.loss:.4f}.*{r.epsilon_max:.3f}", text), r.round
    if terminal:
        assert all(len(line) <= 80 for line in text.splitlines())
        assert "left out at this width" in text
    else:  # a log gets every column, aligned
        assert "B/param up" in text and "declined" in text and "15.48" in text


@pytest.mark.parametrize("terminal", [True, False])
def test_privacy_and_wide_tables(terminal: bool) -> None:
    text = render(terminal, lambda out: privacy_table({str(i): 2.9 + i / 1000 for i in range(10)}, 3.0, out=out))
    assert all(f"{2.9 + i / 1000:.4f}" in text for i in range(10)) and "…" not in text
    wide = [["20261204-230042-c4c5", "a" * 64, "1.000"]]
    text = render(terminal, lambda out: show_table("t", ["run", "model", "eps"], wide, left=(0, 1), out=out))
    assert "20261204-230042-c4c5" in text and "…" not in text  # run ids whole; a column that cannot fit leaves
    assert ("a" * 64 in text) != terminal
