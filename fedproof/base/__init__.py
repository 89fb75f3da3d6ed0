"""The lowest layer: what every other package may use (see ../shared/ARCHITECTURE.md). Imports nothing of fedproof."""
