"""The ServerApp (``flwr run`` loads ``app``; ``fedproof simulate`` builds one bound to its config)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedproof.core.config import RunConfig
from fl_server.federation import FederationResult, RoundObserver, run_federation


def build_server_app(
    config: RunConfig | None = None,
    observer: RoundObserver | None = None,
    results: list[FederationResult] | None = None,
) -> ServerApp:
    """A ServerApp running ``config`` (or, if None, the run config Flower passes in the Context).

    ``observer`` sees each round's metrics as they come; ``results`` receives the final result.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = config or RunConfig.from_mapping(context.run_config)
        result = run_federation(grid, resolved, observer)
        if results is not None:
            results.append(result)

    return server_app


app = build_server_app()
