from __future__ import annotations

import pytest
import torch

from bench.data import DatasetError, as_tensors, load_dataset


def test_digits_split_is_fixed_disjoint_and_scaled():
    tr1, _ = as_tensors(load_dataset("digits", "train"))
    tr2, _ = as_tensors(load_dataset("digits", "train"))
    held, labels = as_tensors(load_dataset("digits", "heldout"))
    assert torch.equal(tr1, tr2)
    assert tr1.shape == (1438, 1, 8, 8) and held.shape == (359, 1, 8, 8)
    assert tr1.min() == -1 and tr1.max() == 1
    assert set(labels.tolist()) == set(range(10))
    # No held-out image is a train image (digits has a few exact duplicates; allow those few).
    flat_tr = {tuple(x.flatten().tolist()) for x in tr1}
    overlap = sum(tuple(x.flatten().tolist()) in flat_tr for x in held)
    assert overlap <= 5


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(name="mnist"), "valid choices: digits, cifar10, celeba64"),
        (dict(name="digits", split="test"), "valid choices: train, heldout"),
        (dict(name="cifar10"), "no --data-root given"),
        (dict(name="cifar10", root="/nonexistent/folder"), "is not a directory"),
    ],
)
def test_dataset_errors_are_one_clear_line(kw, match):
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(**kw)
    assert "\n" not in str(e.value)


def test_cifar_in_empty_root_says_where(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as e:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path) in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


def test_celeba_in_empty_root_says_where(tmp_path):
    with pytest.raises(DatasetError, match="celeba"):
        load_dataset("celeba64", root=tmp_path)
