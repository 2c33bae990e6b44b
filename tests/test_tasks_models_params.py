"""Seeds, models (shapes, parameter counts, seeded init that leaves the global RNG alone) and the
flatten/unflatten/ArrayRecord round trip."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedshield.tasks.models import ModelError, available_models, build_model
from fedshield.tasks.params import (
    ParamLayout,
    ParamsError,
    arrayrecord_to_vector,
    flatten,
    load_vector,
    to_arrayrecord,
    unflatten,
)
from fedshield.tasks.seeding import SeedError, derive_seed, numpy_rng, torch_generator


def test_derive_seed_stable_typed_and_distinct():
    assert derive_seed(0, "client", 3, 1) == derive_seed(0, "client", 3, 1)
    assert derive_seed(0, "client", 3, 1) != derive_seed(0, "client", 1, 3)
    assert derive_seed(1) != derive_seed("1") and derive_seed("a", 1) != derive_seed("a1")
    assert 0 <= derive_seed(2**70, "x") < 2**63
    # Golden values: BLAKE2b, so the same in every process, Python version and machine
    # (unlike hash(), which PYTHONHASHSEED randomises per process).
    assert derive_seed(7, "init") == 2732429916895700204
    assert derive_seed(0, "client", 3, 1) == 2554310438359146584
    assert torch.equal(
        torch.randn(3, generator=torch_generator(5)), torch.randn(3, generator=torch_generator(5))
    )
    assert numpy_rng(5).random() == numpy_rng(5).random()
    with pytest.raises(SeedError):
        derive_seed(1.5)
    with pytest.raises(SeedError):
        derive_seed(True)
    with pytest.raises(SeedError):
        derive_seed()


@pytest.mark.parametrize(
    ("name", "shape", "numel"),
    [
        ("logreg", (1, 8, 8), 64 * 10 + 10),
        ("mlp", (1, 8, 8), 64 * 64 + 64 + 64 * 10 + 10),
        ("mlp", (1, 28, 28), 784 * 64 + 64 + 650),
        # official FLTrust/Fang CNN: 300 + 13550 + 1250*100+100 + 1010
        ("cnn", (1, 28, 28), 139_960),
        # digits: 'same' padding, 8 -> 4 -> 2: 200 features
        ("cnn", (1, 8, 8), 300 + 13_550 + 200 * 100 + 100 + 1010),
    ],
)
def test_model_shapes_and_parameter_counts(name, shape, numel):
    model = build_model(name, shape, 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) == numel
    assert model(torch.zeros(3, *shape)).shape == (3, 10)


def test_cnn_5x5_variant_and_errors():
    assert (
        sum(p.numel() for p in build_model("cnn", (1, 28, 28), 10, kernel_size=5).parameters())
        == 119_440
    )
    with pytest.raises(ModelError, match="available"):
        build_model("resnet", (1, 8, 8), 10)
    with pytest.raises(ModelError, match="hidden"):
        build_model("logreg", (1, 8, 8), 10, hidden=3)
    with pytest.raises(ModelError, match=r"\(C, H, W\)"):
        build_model("cnn", (64,), 10)
    with pytest.raises(ModelError, match="num_classes"):
        build_model("mlp", (4,), 1)
    assert set(available_models()) == {"logreg", "mlp", "cnn"}


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_seeded_init_is_reproducible_and_leaves_global_rng(name):
    state = torch.get_rng_state()
    a = flatten(build_model(name, (1, 8, 8), 10, seed=11))
    b = flatten(build_model(name, (1, 8, 8), 10, seed=11))
    c = flatten(build_model(name, (1, 8, 8), 10, seed=12))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)
    bound = 1 / 8.0 if name != "cnn" else 1 / 3.0  # U(±1/sqrt(fan_in)) of the first layer
    assert a.abs().max() <= bound


def test_the_channels_last_cnn_is_the_nchw_cnn_in_another_layout():
    from fedshield.tasks.training import TrainConfig, train

    cnn = build_model("cnn", (1, 12, 12), 10, seed=3)
    nchw = build_model("cnn", (1, 12, 12), 10, seed=3).to(memory_format=torch.contiguous_format)
    convs = [p for p in cnn.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    assert torch.equal(flatten(cnn), flatten(nchw))  # same seeded values, logical order
    x = torch.randn(40, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 10
    config = TrainConfig(lr=0.1, batch_size=8, local_steps=3)
    def relu_then_pool(m, x):  # the paper's order
        x = torch.max_pool2d(torch.relu(m.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(m.conv2(x)), 2)
        return m.fc2(torch.relu(m.fc1(x.flatten(1))))

    assert torch.equal(nchw(x), relu_then_pool(nchw, x))
    for model in (cnn, nchw):
        train(model, x, y, config, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flatten(cnn), flatten(nchw), rtol=0, atol=1e-5)
    vec = torch.arange(flatten(cnn).numel(), dtype=torch.float32)
    load_vector(cnn, vec)
    assert torch.equal(flatten(cnn), vec)


def test_flatten_unflatten_roundtrip_preserves_order_shapes_dtypes():
    state = {
        "w": torch.randn(3, 4),
        "b": torch.randn(4),
        "half": torch.randn(2, 2).half(),
        "count": torch.tensor(12345, dtype=torch.int64),
    }
    layout = ParamLayout.of(state)
    assert layout.keys == ("w", "b", "half", "count") and layout.numel == 12 + 4 + 4 + 1
    vec = flatten(state)
    assert vec.dtype == torch.float32 and torch.equal(vec[:12], state["w"].reshape(-1))
    back = unflatten(vec, layout)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)
    back["w"].add_(1)  # unflatten returns copies, never views of vec
    assert torch.equal(vec[:12], state["w"].reshape(-1))
    with pytest.raises(ParamsError, match="length 21"):
        unflatten(vec[:-1], layout)


def test_load_vector_in_place():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    weight = model.fc1.weight
    vec = torch.arange(ParamLayout.of(model).numel, dtype=torch.float32)
    load_vector(model, vec)
    assert model.fc1.weight is weight and torch.equal(flatten(model), vec)
    assert model.fc1.weight[0, 1].item() == 1.0 and model.fc1.bias[0].item() == 64 * 64


def test_arrayrecord_roundtrip_and_preallocated_row():
    model = build_model("cnn", (1, 8, 8), 10, seed=3)
    layout = ParamLayout.of(model)
    vec = flatten(model)
    record = to_arrayrecord(vec, layout)
    assert list(record) == list(model.state_dict())
    assert tuple(record["conv1.weight"].shape) == (30, 1, 3, 3)
    assert record["conv1.weight"].dtype == "float32"
    assert ParamLayout.of(record) == layout
    assert torch.equal(arrayrecord_to_vector(record, layout), vec)
    matrix = torch.zeros(3, layout.numel)
    returned = arrayrecord_to_vector(record, layout, out=matrix[1])
    assert returned.data_ptr() == matrix[1].data_ptr()
    assert torch.equal(matrix[1], vec) and matrix[0].abs().sum() == 0 and matrix[2].abs().sum() == 0
    # torch's own ArrayRecord constructor gives the same vector
    assert torch.equal(arrayrecord_to_vector(ArrayRecord(model.state_dict()), layout), vec)


def test_arrayrecord_mismatches_are_named():
    model = build_model("logreg", (1, 8, 8), 10)
    layout = ParamLayout.of(model)
    good = to_arrayrecord(flatten(model), layout)
    missing = ArrayRecord({"linear.weight": good["linear.weight"]})
    with pytest.raises(ParamsError, match=r"missing \['linear.bias'\]"):
        arrayrecord_to_vector(missing, layout)
    wrong = ArrayRecord(
        {"linear.weight": Array(np.zeros((10, 63), np.float32)), "linear.bias": good["linear.bias"]}
    )
    with pytest.raises(ParamsError, match="shape"):
        arrayrecord_to_vector(wrong, layout)
    with pytest.raises(ParamsError, match="contiguous float32"):
        arrayrecord_to_vector(good, layout, out=torch.zeros(layout.numel, dtype=torch.float64))
