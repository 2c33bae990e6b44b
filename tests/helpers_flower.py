"""Builders of Flower Messages for offline strategy tests (explicit Metadata: no run needed)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

SHAPES = {"w": (2, 3), "b": (3,)}


def global_record(offset: float = 0.0) -> ArrayRecord:
    """w = [[0,1,2],[3,4,5]] + offset, b = [10, 11, 12] + offset."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3) + offset
    b = np.array([10, 11, 12], dtype=np.float32) + offset
    return ArrayRecord({"w": Array(w), "b": Array(b)})


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record[k].numpy().reshape(-1) for k in record])


def metadata(node_id: int, message_id: str = "r") -> Metadata:
    return Metadata(run_id=1, message_id=f"{message_id}{node_id}", src_node_id=node_id,
                    dst_node_id=0, reply_to_message_id="m1", group_id="1",
                    created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)


def reply(node_id: int, delta: Any, *, pid: int | None = None, malicious: bool = False,
          num_examples: Any = 10, loss: float = 0.5, base: ArrayRecord | None = None,
          arrays: ArrayRecord | None = None, drop: tuple[str, ...] = (),
          extra: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Message:
    """A train reply whose local model is ``base + delta`` (delta: scalar or flat (9,) array)."""
    base = base if base is not None else global_record()
    if arrays is None:
        vec = flat(base) + np.asarray(delta, dtype=np.float32)
        arrays = ArrayRecord({"w": Array(vec[:6].reshape(2, 3).copy()),
                              "b": Array(vec[6:].copy())})
    metrics: dict[str, Any] = {"train_loss": loss}
    if num_examples is not None:
        metrics["num-examples"] = num_examples
    content: dict[str, Any] = {
        "arrays": arrays,
        "metrics": MetricRecord(metrics),
        "meta": ConfigRecord(meta if meta is not None else
                             {"partition-id": node_id if pid is None else pid,
                              "malicious": malicious}),
    }
    for key in drop:
        content.pop(key)
    content.update(extra or {})
    return Message(content=RecordDict(content), metadata=metadata(node_id))


def error_reply(node_id: int, reason: str = "ClientApp raised") -> Message:
    return Message(error=Error(code=3, reason=reason), metadata=metadata(node_id))


class InProcessGrid:
    """A Flower ``Grid`` stand-in that runs fedshield's ClientApp ``train`` in this process, one
    node per partition (node ids 1001, 1002, ...), for fast end-to-end ServerApp tests.

    ``crash_in_round``: raise ``RuntimeError`` when that (1-based, call-count) round is sent,
    simulating a server crash. ``node_config``: extra node_config entries per partition id.
    ``first_node_id``: node id of partition 0 (a resumed Flower simulation renumbers its nodes).
    """

    def __init__(self, run_config: dict[str, Any], num_nodes: int, *,
                 crash_in_round: int | None = None,
                 node_config: dict[int, dict[str, Any]] | None = None,
                 first_node_id: int = 1001) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.run_config = run_config
        self.nodes = {first_node_id + i: i for i in range(num_nodes)}
        self.crash_in_round = crash_in_round
        self.node_config = node_config or {}
        self.calls = 0
        self.states = {node: RecordDict() for node in self.nodes}  # a SuperNode's node state

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Context

        from fedshield.clients.client_app import train

        messages = list(messages)
        if not messages:
            return []
        self.calls += 1
        if self.crash_in_round == self.calls:
            raise RuntimeError(f"simulated crash in round {self.calls}")
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            pid = self.nodes[node]
            ctx = Context(run_id=1, node_id=node, state=self.states[node],
                          run_config=self.run_config,
                          node_config={"partition-id": pid, "num-partitions": len(self.nodes),
                                       **self.node_config.get(pid, {})})
            replies.append(train(msg, ctx))
        return replies


def private_flower_env(home) -> dict[str, str]:
    """The environment of a ``flwr run`` that starts its own local SuperLink: a private
    FLWR_HOME and free ports (never another user's SuperLink), no runtime installs, one thread."""
    import os
    import sys
    from pathlib import Path

    from fedshield.simulations.engine_flower import free_port

    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
