"""The MS-COCO path on a tiny fake folder in COCO's layout: captions read, images cropped and
resized, caption features precomputed once (resumable), pairs served, bad folders refused."""

from __future__ import annotations

import json

import pytest
import torch
from test_text import DIM, FakeEncoder

from bench.coco import CocoCaptions, CocoFeatures, precompute_features
from bench.data import DatasetError


@pytest.fixture
def coco(tmp_path):
    from PIL import Image

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate([(40, 30), (24, 24), (30, 50)]):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (w, h), (40 * i, 100, 200)).save(root / "val2014" / name)
        images.append({"id": 10 + i, "file_name": name})
        anns += [
            {"image_id": 10 + i, "id": 2 * i, "caption": f"a photo number {i} "},
            {"image_id": 10 + i, "id": 2 * i + 1, "caption": f"picture {i}"},
        ]
    images.append({"id": 99, "file_name": "no-captions.jpg"})  # no caption: left out
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns})
    )
    return root


def test_captions_and_images_load_in_id_order(coco):
    ds = CocoCaptions(coco, "val", size=16)
    assert len(ds) == 3 and ds.ids == [10, 11, 12]
    img, caps = ds[2]
    assert img.shape == (3, 16, 16) and -1 <= img.min() and img.max() <= 1
    assert caps == ["a photo number 2", "picture 2"]


def test_features_are_precomputed_once_and_paired_with_images(coco, tmp_path):
    ds = CocoCaptions(coco, "val", size=16)
    out = precompute_features(ds, FakeEncoder(), tmp_path / "feats", length=8, progress=False)
    files = sorted(out.glob("*.safetensors"))
    assert [f.stem for f in files] == ["10", "11", "12"]
    stamp = files[0].stat().st_mtime_ns
    precompute_features(ds, FakeEncoder(), out, length=8, progress=False)  # resumes: no rewrite
    assert files[0].stat().st_mtime_ns == stamp
    img, ctx = CocoFeatures(ds, out)[1]
    assert img.shape == (3, 16, 16) and ctx.shape == (8, DIM)
    assert any(torch.equal(ctx, c) for c in FakeEncoder().encode(ds.captions[11], 8))


def test_bad_coco_folders_are_one_line(coco, tmp_path):
    with pytest.raises(DatasetError, match=r"annotations/captions_train2014\.json"):
        CocoCaptions(coco, "train")
    with pytest.raises(DatasetError, match="valid choices: train, val"):
        CocoCaptions(coco, "test")
    (coco / "annotations" / "captions_val2014.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a COCO captions file"):
        CocoCaptions(coco, "val")


def test_missing_features_are_named(coco, tmp_path):
    ds = CocoCaptions(coco, "val", size=16)
    with pytest.raises(DatasetError, match="precompute_features"):
        CocoFeatures(ds, tmp_path / "empty")
