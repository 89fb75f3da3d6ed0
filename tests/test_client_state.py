from __future__ import annotations

from flwr.app import Context, RecordDict

from fl_client.state import ClientState


def test_state_persists_in_context_between_rounds() -> None:
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    assert ClientState.load(context) == ClientState()
    ClientState.load(context).after_training(1, 100).save(context)
    ClientState.load(context).after_training(3, 50).save(context)
    assert ClientState.load(context) == ClientState(rounds_trained=2, examples_seen=150, last_round=3)
