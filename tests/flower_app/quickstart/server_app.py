"""The ServerApp, as in Flower's quickstart, with the one-line change to a robust strategy."""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedshield import RobustStrategy, create
from quickstart.task import Net, load_test, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    calls: list[int] = []

    def train_metrics(contents, weighted_by_key):  # the user's own aggregation of metrics
        calls.append(len(contents))
        total = sum(c["metrics"][weighted_by_key] for c in contents)
        return MetricRecord({"train_loss": sum(c["metrics"]["train_loss"]
                                               * c["metrics"][weighted_by_key]
                                               for c in contents) / total})

    name = str(context.run_config["strategy"])
    common = {"fraction_evaluate": 0.0, "train_metrics_aggr_fn": train_metrics}
    strategy = (FedAvg(**common) if name == "fedavg"
                else RobustStrategy(create(name), **common))  # the one changed line
    net = Net()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(net.state_dict()),
                            num_rounds=int(context.run_config["num-server-rounds"]))
    state = result.arrays.to_torch_state_dict()
    net.load_state_dict(state)  # the final model loads into the user's model
    x, y = load_test()
    out = {"accuracy": test(net, x, y), "metrics_calls": calls,
           "num_batches_tracked_dtype": str(state["bn.num_batches_tracked"].dtype),
           "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()}}
    with open(str(context.run_config["result-file"]), "w", encoding="utf-8") as fh:
        json.dump(out, fh)
