"""The ClientApp, as in Flower's quickstart: full weights back, ``train_loss`` and
``num-examples`` metrics. The first ``num-malicious`` partitions flip and boost their update
(×4) and report a poisoned BatchNorm variance."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart.task import Net, load_data, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    parts = int(context.node_config["num-partitions"])
    server_round = int(msg.content["config"]["server-round"])
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    start = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = load_data(pid, parts)
    loss = train(net, x, y, int(context.run_config["local-epochs"]),
                 float(context.run_config["lr"]), seed=1000 * server_round + pid)
    state = net.state_dict()
    if pid < int(context.run_config["num-malicious"]):
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = start[key] - 4.0 * (value - start[key])
        state["bn.running_var"] = state["bn.running_var"].abs() * 1000.0
    content = RecordDict({"arrays": ArrayRecord(state),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)
