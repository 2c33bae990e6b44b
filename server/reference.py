"""FLTrust's server-side reference update (Cao et al., *FLTrust: Byzantine-robust Federated
Learning via Trust Bootstrapping*, NDSS 2021, Alg. 1 line "g_0 = ModelUpdate(w, D_0, b, β, R_l)").

Each round the server trains a copy of the global model θ_t on its small clean root dataset D_0
with exactly the clients' local training configuration (same optimiser, lr, batch size, local
steps/epochs), seeded by ``(cfg.seed, "server", round)``; the reference is g_0 = θ_0' − θ_t.
The rule then scores each client delta against g_0 (ReLU-clipped cosine trust, norm rescaling).
This module uses only ``tasks`` (no client code): the server does not run clients' code paths.
"""

from __future__ import annotations

import torch

from fedshield.tasks.config import RunConfig
from fedshield.tasks.params import flatten, load_vector
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.task import Task
from fedshield.tasks.training import train


class ReferenceError(ValueError):
    """The server cannot compute a reference update (no root data configured)."""


def reference_update(task: Task, global_vec: torch.Tensor, server_round: int,
                     cfg: RunConfig) -> torch.Tensor:
    """g_0 (d,) float32: the delta of one local-training pass on the root set from θ_t."""
    x, y = task.root_data()
    if len(y) == 0:
        raise ReferenceError(
            "the aggregator needs a reference update but the root dataset is empty; "
            "set root_size > 0"
        )
    model = task.scratch_model("reference")  # every parameter is overwritten just below
    load_vector(model, global_vec)
    generator = torch_generator(cfg.seed, "server", server_round)
    train(model, x, y, task.train_config, generator=generator)
    return flatten(model.state_dict()) - global_vec
