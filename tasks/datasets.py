"""Real datasets, offline: images as normalised float32 tensors (N, C, H, W), labels int64.

Names (see :func:`available_datasets`):

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (UCI "Optical Recognition of
  Handwritten Digits", CC BY 4.0), 1797 images, values 0..16 scaled to [0, 1]. There is no official
  split: we use a **fixed stratified split of 1437 train / 360 test** (per class, the test share is
  allotted by largest remainder so that it sums to 360; the members are drawn with
  ``numpy.random.default_rng(0)``). Identical on every machine.
- ``mnist``: LeCun, Cortes & Burges' MNIST (CC BY-SA 3.0), 60 000 / 10 000 28×28, from the IDX.gz
  files vendored in ``tasks/data/mnist/`` (or ``root=<dir>`` holding the 4 IDX files).
- ``fashion-mnist``: Xiao, Rasul & Vollgraf's Fashion-MNIST (MIT), 60 000 / 10 000 28×28, from
  the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``) or
  ``root=<dir>``.
- ``idx``: any MNIST-format data (EMNIST, KMNIST, your own) in ``root=<dir>``: the 4 IDX files
  ``*train*images*idx3*``, ``*train*labels*idx1*``, ``*(t10k|test)*images*idx3*``,
  ``*(t10k|test)*labels*idx1*``, gzipped or not.
- ``npz``: ``root=<file.npz>`` with arrays ``x_train, y_train, x_test, y_test``; x is (N, H, W),
  (N, C, H, W), (N, H, W, C) with C ∈ {1, 3, 4} (channels-last when the last axis is the smaller
  one), or (N, F) flat features.
- ``hf:<hub name>``: a Hugging Face Hub dataset (e.g. ``hf:ylecun/mnist``) with ``train``/``test``
  splits. Needs the network and the ``datasets`` package (``pip install flwr-datasets``), and must
  be asked for explicitly: ``allow_network=True`` or the environment ``FEDSHIELD_ALLOW_NETWORK=1``.

Normalisation: x = (x01 − mean) / std with x01 the pixel scaled to [0, 1] and (mean, std) the scalar
mean and population standard deviation of the *train* set's x01. Constants for the built-ins
(computed from the data, checked by a test): digits 0.3051 / 0.3759, MNIST 0.1307 / 0.3081,
Fashion-MNIST 0.2860 / 0.3530. For idx/npz/hf they are computed at load time. ``low`` / ``high``
are the normalised black (x01 = 0) and white (x01 = 1) values; for float data that is not in [0, 1]
they are the normalised train minimum and maximum.

Loaded datasets are cached per process (keyed by name and root); treat their tensors as read-only.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Dataset",
    "DatasetError",
    "available_datasets",
    "clear_cache",
    "load_dataset",
    "read_idx",
]

MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
NETWORK_ENV = "FEDSHIELD_ALLOW_NETWORK"

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
# (mean, std) of the train set scaled to [0, 1]; tests recompute them.
DIGITS_STATS = (0.3051, 0.3759)
MNIST_STATS = (0.1307, 0.3081)
FASHION_MNIST_STATS = (0.2860, 0.3530)

_DESCRIPTIONS = {
    "digits": "scikit-learn 8x8 digits, 1437/360 fixed stratified split, 10 classes (bundled)",
    "mnist": "MNIST 28x28, 60000/10000, 10 classes (vendored IDX.gz in tasks/data/mnist)",
    "fashion-mnist": "Fashion-MNIST 28x28, 60000/10000, 10 classes "
    "(apt-get install dataset-fashion-mnist, or root=<IDX dir>)",
    "idx": "the 4 MNIST-format IDX files (.gz or not) in root=<dir> (EMNIST, KMNIST, your own)",
    "npz": "root=<file.npz> with x_train, y_train, x_test, y_test",
    "hf:<name>": "a Hugging Face Hub dataset; needs network, `pip install flwr-datasets` and "
    f"allow_network=True (or {NETWORK_ENV}=1)",
}


class DatasetError(ValueError):
    """An unknown dataset, a missing file or package, or malformed data; says how to fix it."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset, normalised, with a fixed train/test split.

    ``train_x``/``test_x`` float32 (N, *input_shape); ``train_y``/``test_y`` int64 in
    [0, num_classes). ``low``/``high``: normalised values of black/white pixels (for triggers).
    ``mean``/``std``: the normalisation applied to [0, 1] pixels, ``x = (x01 - mean) / std``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    low: float
    high: float
    mean: float = 0.0
    std: float = 1.0
    source: str = ""

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Map raw values on the [0, 1] pixel scale to this dataset's normalised scale."""
        return (x01 - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"classes={self.num_classes}, input_shape={self.input_shape}, source={self.source!r})"
        )


def available_datasets() -> dict[str, str]:
    """Dataset names (``hf:<name>`` is a pattern) mapped to a one-line description."""
    return dict(_DESCRIPTIONS)


def clear_cache() -> None:
    """Forget the per-process cache of loaded datasets."""
    _load_cached.cache_clear()


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, *, allow_network: bool = False
) -> Dataset:
    """Load dataset ``name`` (see the module docstring); cached per process.

    ``root``: the directory (``idx``, or an override for ``mnist``/``fashion-mnist``) or the file
    (``npz``); ``""`` means none. ``allow_network`` must be true for ``hf:<name>``.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; {_choices()}")
    key = name.strip()
    if not key.startswith("hf:"):
        key = key.lower()
        if key not in _DESCRIPTIONS:
            raise DatasetError(f"unknown dataset {name!r}; {_choices()}")
    root_key = str(Path(root).expanduser().resolve()) if root not in (None, "") else None
    # Only hf: depends on the network flag; keep one cache entry per local dataset.
    network = key.startswith("hf:") and (allow_network or os.environ.get(NETWORK_ENV, "") == "1")
    return _load_cached(key, root_key, network)


def _choices() -> str:
    return "available datasets: " + "; ".join(f"{k} ({v})" for k, v in _DESCRIPTIONS.items())


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None, network: bool) -> Dataset:
    if name.startswith("hf:"):
        return _load_hf(name, network)
    if name == "digits":
        _refuse_root(name, root)
        return _load_digits()
    if name == "mnist":
        directory = Path(root) if root else MNIST_DIR
        return _from_idx_dir("mnist", directory, stats=MNIST_STATS)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root)
    if name == "idx":
        if root is None:
            raise DatasetError("dataset 'idx' needs root=<directory with the 4 IDX files>")
        return _from_idx_dir("idx", Path(root), stats=None)
    if root is None:
        raise DatasetError("dataset 'npz' needs root=<file.npz with x_train/y_train/x_test/y_test>")
    return _load_npz(Path(root))


def _refuse_root(name: str, root: str | None) -> None:
    if root is not None:
        raise DatasetError(f"dataset {name!r} is bundled and takes no root (got {root!r})")


# --- digits ----------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 0..16, labels) without importing ``sklearn.datasets``
    (1.5-2.6 s): read the CSV bundled in its package; fall back to ``load_digits``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover - layout changed upstream

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def stratified_test_indices(labels: np.ndarray, test_size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified test set of exactly ``test_size`` samples: class c gets
    ⌊test_size·n_c/N⌋ plus one for the largest remainders; members drawn uniformly by ``seed``."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = test_size * counts / counts.sum()
    share = np.floor(exact).astype(np.int64)
    extra = test_size - int(share.sum())
    share[np.argsort(-(exact - share), kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, share, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _load_digits() -> Dataset:
    images, labels = _digits_arrays()
    test = stratified_test_indices(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    train = np.setdiff1d(np.arange(len(labels)), test)
    x01 = images[:, None, :, :] / 16.0
    return _finish(
        "digits", x01[train], labels[train], x01[test], labels[test],
        stats=DIGITS_STATS, source="sklearn digits.csv.gz",
    )  # fmt: skip


# --- IDX -------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (LeCun's format; gzipped if the name ends in ``.gz``).

    Layout: 2 zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then each dimension as a big-endian uint32, then the
    data, big-endian, row-major.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise DatasetError(
            f"{path}: IDX header says {dims} x {dtype.itemsize} bytes but the file holds "
            f"{len(raw) - header} data bytes (truncated or corrupt)"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


_IDX_ROLES = {
    "train images": re.compile(r"train.*images?.*idx3"),
    "train labels": re.compile(r"train.*labels?.*idx1"),
    "test images": re.compile(r"(t10k|test).*images?.*idx3"),
    "test labels": re.compile(r"(t10k|test).*labels?.*idx1"),
}


def find_idx_files(directory: Path) -> dict[str, Path]:
    """The 4 IDX files of ``directory`` by role; an uncompressed copy wins over its ``.gz``."""
    if not directory.is_dir():
        raise DatasetError(f"IDX directory {directory} does not exist or is not a directory")
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    found: dict[str, Path] = {}
    for role, pattern in _IDX_ROLES.items():
        hits = [n for n in names if pattern.search(n.lower())]
        stems = sorted({n.removesuffix(".gz") for n in hits})
        if len(stems) != 1:
            what = "no file" if not stems else f"several files {hits}"
            raise DatasetError(
                f"{directory}: {what} for the {role} (expected exactly one name matching "
                f"{pattern.pattern!r}, .gz optional); files there: {names}"
            )
        found[role] = directory / (stems[0] if stems[0] in hits else stems[0] + ".gz")
    return found


def _from_idx_dir(name: str, directory: Path, stats: tuple[float, float] | None) -> Dataset:
    files = find_idx_files(directory)
    arrays = {role: read_idx(path) for role, path in files.items()}
    xs = [_images_nchw(arrays[f"{s} images"], f"{files[f'{s} images']}") for s in ("train", "test")]
    return _finish(
        name, xs[0], arrays["train labels"], xs[1], arrays["test labels"],
        stats=stats, source=str(directory),
    )  # fmt: skip


def _load_fashion_mnist(root: str | None) -> Dataset:
    directory = Path(root) if root else FASHION_MNIST_DIR
    if root is None and not directory.is_dir():
        raise DatasetError(
            f"fashion-mnist not found in {directory}: install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, MIT licence), or pass "
            "root=<directory with the 4 Fashion-MNIST IDX files> (run config data_root)"
        )
    return _from_idx_dir("fashion-mnist", directory, stats=FASHION_MNIST_STATS)


# --- npz and Hugging Face ----------------------------------------------------------------------


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise DatasetError(f"{path} lacks arrays {missing}; it has {sorted(data.files)}")
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot read npz file {path}: {exc}") from None
    xs = [_images_nchw(arrays[k], f"{path}:{k}") for k in ("x_train", "x_test")]
    return _finish(
        "npz", xs[0], arrays["y_train"], xs[1], arrays["y_test"], stats=None, source=str(path)
    )


def _load_hf(name: str, network: bool) -> Dataset:
    hub_name = name.removeprefix("hf:")
    if not hub_name:
        raise DatasetError("hf: needs a Hub dataset name, e.g. 'hf:ylecun/mnist'")
    if not network:
        raise DatasetError(
            f"dataset {name!r} downloads from the Hugging Face Hub, which needs network access; "
            f"ask for it explicitly with allow_network=True or {NETWORK_ENV}=1. Offline, use "
            "'idx' or 'npz' with a local copy"
        )
    try:
        import datasets as hf_datasets
    except ImportError:
        raise DatasetError(
            f"dataset {name!r} needs the Hugging Face `datasets` package: "
            "`pip install flwr-datasets` (about 530 MB with pyarrow and pandas), plus network "
            "access to huggingface.co. Offline, use 'idx' or 'npz' with a local copy"
        ) from None
    try:
        hub = hf_datasets.load_dataset(hub_name)
    except Exception as exc:  # the Hub raises many types; all mean "could not get it"
        raise DatasetError(f"could not load {hub_name!r} from the Hugging Face Hub: {exc}") from exc
    arrays = [_hf_split(hub, hub_name, split) for split in ("train", "test")]
    return _finish(
        name, arrays[0][0], arrays[0][1], arrays[1][0], arrays[1][1],
        stats=None, source=f"huggingface.co/datasets/{hub_name}",
    )  # fmt: skip


def _hf_split(hub: object, hub_name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in hub:  # type: ignore[operator]
        raise DatasetError(f"{hub_name!r} has no {split!r} split (has {list(hub)})")  # type: ignore[call-overload]
    part = hub[split]  # type: ignore[index]
    image_col = next((c for c in ("image", "img", "pixel_values") if c in part.column_names), None)
    label_col = next((c for c in ("label", "labels", "fine_label") if c in part.column_names), None)
    if image_col is None or label_col is None:
        raise DatasetError(f"{hub_name!r}: need image and label columns, got {part.column_names}")
    x = np.stack([np.asarray(img) for img in part[image_col]])
    return _images_nchw(x, f"{hub_name}:{split}"), np.asarray(part[label_col])


# --- shared finishing ------------------------------------------------------------------------


def _images_nchw(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[-1] < x.shape[1]:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC: channels last and smaller
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    raise DatasetError(
        f"{what}: images of shape {x.shape} are not (N,H,W), (N,C,H,W), (N,H,W,C) with C in "
        "{1,3,4}, or (N,F)"
    )


def _finish(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    stats: tuple[float, float] | None,
    source: str,
) -> Dataset:
    """Scale to [0, 1] (uint8 /255; digits come pre-scaled), normalise, check labels."""
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(f"{name}: train x {train_x.shape} and test x {test_x.shape} differ")
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y) or len(x) == 0:
            raise DatasetError(f"{name}: {split} has {len(x)} inputs and {len(y)} labels")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DatasetError(f"{name}: {split} labels must be non-negative integers (N,)")
    integer_pixels = np.issubdtype(train_x.dtype, np.integer)
    scale = 255.0 if integer_pixels else 1.0
    tx, sx = _to_unit(train_x, scale), _to_unit(test_x, scale)
    mean, std = stats if stats is not None else (float(tx.mean(dtype=np.float64)), _std(tx))
    if not std > 0:
        raise DatasetError(f"{name}: the train inputs are constant (std 0); cannot normalise")
    in_unit = integer_pixels or (float(tx.min()) >= 0.0 and float(tx.max()) <= 1.0)
    black, white = (0.0, 1.0) if in_unit else (float(tx.min()), float(tx.max()))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if len(np.unique(train_y)) < 2:
        raise DatasetError(f"{name}: the train set has a single class")
    train_t, test_t = torch.from_numpy(tx), torch.from_numpy(sx)
    for t in (train_t, test_t):
        t.sub_(mean).div_(std)
    return Dataset(
        name=name,
        train_x=train_t,
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=test_t,
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in tx.shape[1:]),
        low=(black - mean) / std,
        high=(white - mean) / std,
        mean=mean,
        std=std,
        source=source,
    )


def _to_unit(x: np.ndarray, scale: float) -> np.ndarray:
    out = x.astype(np.float32)  # always a fresh array: the in-place steps below may not alias
    if scale != 1.0:
        out *= np.float32(1.0 / scale)
    return out


def _std(x: np.ndarray) -> float:
    """Population standard deviation, accumulated in float64 without a float64 copy of x."""
    flat = x.reshape(-1)
    mean = flat.mean(dtype=np.float64)
    sq = sum(float(np.square(c - mean, dtype=np.float64).sum()) for c in np.array_split(flat, 64))
    return math.sqrt(sq / flat.size)
