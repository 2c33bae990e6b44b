"""Dataset loaders: canonical MNIST, the digits split, normalisation constants, IDX/npz loaders and
their errors, the Hugging Face path's offline errors."""

import gzip
import struct
import sys

import numpy as np
import pytest
import torch

from fedshield.tasks import datasets as D
from fedshield.tasks.datasets import DatasetError, load_dataset, read_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _raw01(ds: D.Dataset) -> torch.Tensor:
    return ds.train_x.double() * ds.std + ds.mean


def test_digits_fixed_stratified_split_and_normalisation():
    ds = load_dataset("digits")
    assert (len(ds.train_y), len(ds.test_y)) == (1437, 360)
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.train_x.dtype == torch.float32
    assert ds.train_y.dtype == torch.int64 and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    test_counts = torch.bincount(ds.test_y).tolist()
    assert sum(test_counts) == 360 and max(test_counts) - min(test_counts) <= 2  # stratified
    raw = _raw01(ds)
    assert abs(raw.mean().item() - D.DIGITS_STATS[0]) < 1e-4
    assert abs(raw.std(unbiased=False).item() - D.DIGITS_STATS[1]) < 1e-4
    assert ds.low == pytest.approx(-D.DIGITS_STATS[0] / D.DIGITS_STATS[1])
    assert raw.min().item() == pytest.approx(0.0, abs=1e-6)
    assert raw.max().item() == pytest.approx(1.0, abs=1e-6)
    assert load_dataset("digits") is ds  # cached per process


def test_digits_matches_sklearn_loader():
    from sklearn.datasets import load_digits

    images, labels = D._digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)


def test_mnist_canonical_counts_and_constants():
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.test_y).tolist()[:3] == [980, 1135, 1032]
    raw = _raw01(ds)
    assert abs(raw.mean().item() - D.MNIST_STATS[0]) < 1e-4
    assert abs(raw.std(unbiased=False).item() - D.MNIST_STATS[1]) < 1e-4
    assert ds.high == pytest.approx((1 - 0.1307) / 0.3081)


@pytest.mark.skipif(not D.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    raw = _raw01(ds)
    assert abs(raw.mean().item() - D.FASHION_MNIST_STATS[0]) < 1e-4
    assert abs(raw.std(unbiased=False).item() - D.FASHION_MNIST_STATS[1]) < 1e-4


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "absent")
    D.clear_cache()
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    D.clear_cache()


def test_unknown_name_lists_available():
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10")
    for name in ("digits", "mnist", "fashion-mnist", "idx", "npz", "hf:<name>"):
        assert name in str(err.value)
    assert set(D.available_datasets()) == {
        "digits",
        "mnist",
        "fashion-mnist",
        "idx",
        "npz",
        "hf:<name>",
    }


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _fake_idx_dir(tmp_path, gz):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 5, 6)),
        "train-labels-idx1-ubyte": np.arange(30) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (9, 5, 6)),
        "t10k-labels-idx1-ubyte": np.arange(9) % 3,
    }
    for name, arr in arrays.items():
        _write_idx(tmp_path / name, arr, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loader(tmp_path, gz):
    arrays = _fake_idx_dir(tmp_path, gz)
    ds = load_dataset("idx", root=tmp_path)
    assert ds.input_shape == (1, 5, 6) and ds.num_classes == 3
    raw = arrays["train-images-idx3-ubyte"] / 255.0
    np.testing.assert_allclose(_raw01(ds).numpy()[:, 0], raw, atol=1e-5)
    assert ds.mean == pytest.approx(raw.mean()) and ds.std == pytest.approx(raw.std())
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.low == pytest.approx(-ds.mean / ds.std)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(bad)
    short = _write_idx(tmp_path / "short-idx1-ubyte", np.arange(10), gz=False)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(short)
    assert read_idx(_write_idx(tmp_path / "ok-idx1-ubyte", np.arange(4), gz=True)).tolist() == [
        0,
        1,
        2,
        3,
    ]


def test_idx_errors_missing_dir_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("idx", root=tmp_path / "nope")
    with pytest.raises(DatasetError, match="needs root"):
        load_dataset("idx")
    _fake_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="no file for the test labels"):
        load_dataset("idx", root=tmp_path)


def test_npz_loader_nhwc_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    x_train = rng.integers(0, 256, (20, 4, 4, 3)).astype(np.uint8)
    np.savez(
        path,
        x_train=x_train,
        y_train=np.arange(20) % 4,
        x_test=rng.integers(0, 256, (5, 4, 4, 3)).astype(np.uint8),
        y_test=np.arange(5) % 4,
    )
    ds = load_dataset("npz", root=path)
    assert ds.input_shape == (3, 4, 4) and ds.num_classes == 4
    np.testing.assert_allclose(_raw01(ds).numpy(), x_train.transpose(0, 3, 1, 2) / 255, atol=1e-5)
    np.savez(tmp_path / "bad.npz", x_train=x_train)
    with pytest.raises(DatasetError, match=r"lacks arrays \['y_train', 'x_test', 'y_test'\]"):
        load_dataset("npz", root=tmp_path / "bad.npz")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("npz", root=tmp_path / "missing.npz")


def test_hf_needs_explicit_network_option(monkeypatch):
    monkeypatch.delenv(D.NETWORK_ENV, raising=False)
    with pytest.raises(DatasetError, match="allow_network=True"):
        load_dataset("hf:ylecun/mnist")


def test_hf_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DatasetError, match="pip install flwr-datasets") as err:
        load_dataset("hf:ylecun/mnist", allow_network=True)
    assert "network" in str(err.value)


def test_hf_path_with_a_stand_in_hub(monkeypatch):
    """The conversion code (columns, images to NCHW, labels) on a fake `datasets` module."""
    import types

    rng = np.random.default_rng(0)

    class Split:
        def __init__(self, n):
            self.columns = {"image": list(rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)),
                            "label": [i % 2 for i in range(n)]}  # fmt: skip
            self.column_names = list(self.columns)

        def __getitem__(self, col):
            return self.columns[col]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name: {"train": Split(12), "test": Split(4)}
    monkeypatch.setitem(sys.modules, "datasets", fake)
    D.clear_cache()
    ds = load_dataset("hf:someone/tiny", allow_network=True)
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 2 and len(ds.test_y) == 4
    assert ds.source == "huggingface.co/datasets/someone/tiny"
    fake.load_dataset = lambda name: {"train": Split(3)}
    D.clear_cache()
    with pytest.raises(DatasetError, match="no 'test' split"):
        load_dataset("hf:someone/tiny", allow_network=True)
    D.clear_cache()
