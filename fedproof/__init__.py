"""fedproof: federated training with differential privacy, encrypted aggregation and an auditable ledger."""

import os

# Flower phones home unless told not to; nothing fedproof starts should.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

__version__ = "0.1.0"
