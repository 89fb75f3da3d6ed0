"""The ``fedproof`` command: one file per command group (``main`` assembles them)."""

from fedproof.cli.main import app

__all__ = ["app"]
