"""fedshield's Flower ClientApp: local training on this node's partition (honest or poisoned).

- ``node_config`` gives ``partition-id`` and ``num-partitions`` (set by the Simulation Engine; in a
  deployment pass ``flower-supernode --node-config "partition-id=0 num-partitions=3"``);
  ``num-partitions`` must equal the run's ``num-clients``. An optional node-config key ``malicious``
  (bool) overrides the run config's choice for this node (a red-team SuperNode in a deployment).
- Otherwise a node is malicious iff its partition id is in ``RunConfig.malicious_ids()``
  (chosen from the seed). A malicious node with a *data* attack trains on poisoned data
  (``clients.client.client_update`` with the attack); with a *model* attack it trains honestly and
  the ServerApp's simulation adversary stage rewrites its update.
- Reply: ``arrays`` (ArrayRecord, the local model θ_t + Δ, same keys/shapes/dtypes as received),
  ``metrics`` (MetricRecord ``train_loss``, ``num-examples``: Flower's conventions), and
  ``meta`` (ConfigRecord ``partition-id``, ``malicious``: ground truth for detection metrics;
  never in the MetricRecord, which Flower averages).
- ``evaluate``: loss/accuracy of the received model on this node's own partition (federated
  evaluation; fedshield's ServerApp evaluates centrally and does not send evaluate messages).
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedshield.tasks.config import ConfigError, RunConfig
from fedshield.tasks.params import arrayrecord_to_vector, load_vector, to_arrayrecord
from fedshield.tasks.task import get_task

app = ClientApp()


def run_config(context: Context) -> RunConfig:
    """The run's RunConfig; ``num-clients = 0`` follows the federation (``num-partitions``)."""
    parts = context.node_config.get("num-partitions")
    return RunConfig.from_flower(context.run_config,
                                 federation_size=parts if isinstance(parts, int) else None)


def node_identity(context: Context, cfg: RunConfig) -> tuple[int, bool]:
    """(partition id, malicious?) of this node; raises ConfigError on a bad node_config."""
    nc = context.node_config
    try:
        pid = int(nc["partition-id"])
        nparts = int(nc["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            "node_config needs integer 'partition-id' and 'num-partitions' "
            f"(flower-supernode --node-config), got {dict(nc)!r}"
        ) from None
    if nparts != cfg.num_clients:
        raise ConfigError(f"node_config num-partitions={nparts} != run config "
                          f"num-clients={cfg.num_clients}")
    if not 0 <= pid < nparts:
        raise ConfigError(f"node_config partition-id={pid} not in [0, {nparts})")
    if "malicious" in nc:
        flag = nc["malicious"]
        if not isinstance(flag, bool):
            raise ConfigError(f"node_config malicious must be a boolean, got {flag!r}")
        return pid, flag
    from fedshield.clients.attacks.base import registry

    if getattr(registry().get(cfg.attack), "fake", False):
        return pid, False  # MPAF adds its own fake clients: every real node is honest
    return pid, pid in set(cfg.malicious_ids())


#: the reply record where a simulated attacker whose trigger changes every round (A3FL) reports
#: it, for the simulation ServerApp's ASR measurement (never read by the aggregation)
TRIGGER_KEY = "attack-trigger"

#: the node-state record where a malicious node keeps its attack's memory between rounds (the
#: ClientApp is rebuilt for every message: Neurotoxin's last global model lives here)
ATTACK_MEMORY = "fedshield-attack-memory"


def _data_attack(cfg: RunConfig, dataset: Any) -> Any | None:
    """The run's data attack for a malicious node (None for a model attack or attack='none'):
    the one builder the inline engine and the ServerApp use (``attack_from_config``)."""
    if cfg.attack == "none":
        return None
    from fedshield.clients.attacks import attack_from_config

    attack = attack_from_config(cfg, dataset)
    return attack if attack is not None and attack.kind == "data" else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from fedshield.clients.client import client_update

    cfg = run_config(context)
    pid, malicious = node_identity(context, cfg)
    task = get_task(cfg)
    received: ArrayRecord = msg.content["arrays"]
    global_vec = arrayrecord_to_vector(received, task.layout)
    server_round = int(msg.content["config"]["server-round"])
    attack = _data_attack(cfg, task.dataset) if malicious else None
    if attack is not None and ATTACK_MEMORY in context.state:  # what it saw in earlier rounds
        saved = context.state[ATTACK_MEMORY]
        attack.restore({key: torch.from_numpy(saved[key].numpy()) for key in saved})
    result = client_update(task, pid, global_vec, server_round, attack=attack, cfg=cfg)
    if attack is not None and attack.memory():
        context.state[ATTACK_MEMORY] = ArrayRecord(
            {key: Array(value.detach().cpu().numpy()) for key, value in attack.memory().items()})
    content = RecordDict({
        "arrays": to_arrayrecord(global_vec + result.delta, task.layout),
        "metrics": MetricRecord({"train_loss": float(result.loss),
                                 "num-examples": int(result.num_examples)}),
        "meta": ConfigRecord({"partition-id": pid, "malicious": bool(malicious)}),
    })
    if attack is not None and getattr(attack, "dynamic_trigger", False) and attack.memory():
        content[TRIGGER_KEY] = ArrayRecord(  # A3FL: the trigger the server measures ASR with
            {key: Array(value.detach().cpu().numpy()) for key, value in attack.memory().items()})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from fedshield.tasks.training import evaluate as evaluate_model

    cfg = run_config(context)
    pid, _ = node_identity(context, cfg)
    task = get_task(cfg)
    model = task.new_model()
    load_vector(model, arrayrecord_to_vector(msg.content["arrays"], task.layout))
    x, y = task.client_data(pid)
    result = evaluate_model(model, x, y)
    return Message(content=RecordDict({"metrics": MetricRecord({
        "eval-loss": float(result.loss), "eval-acc": float(result.accuracy),
        "num-examples": len(y)})}), reply_to=msg)
