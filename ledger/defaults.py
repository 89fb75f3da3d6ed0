"""Defaults shared by the devnet, the server and the CLI (a module of its own: importing it costs nothing)."""

from pathlib import Path

DEFAULT_DATA_DIR = Path("~/.local/share/fedproof/devnet")
"""Where the local devnet keeps its chain, its contract address and the simulated clients' keys."""
