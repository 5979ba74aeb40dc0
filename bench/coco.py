"""MS-COCO captions from a local folder, and their text features precomputed as U-ViT does.

U-ViT's text-to-image model (Bao et al. 2023, Sec. 4.3; DeeDiff evaluates it at certainty
threshold 0.87) trains on MS-COCO 2014 at 256x256 with each caption encoded once by a frozen
CLIP text encoder and stored beside the images, so training never runs the encoder. The same
path here, for users who hold the data (nothing is downloaded):

- :class:`CocoCaptions` reads ``ROOT/annotations/captions_{train,val}2014.json`` and the images
  under ``ROOT/{train,val}2014/``, centre-crops and resizes them to ``size`` (U-ViT: 256; its
  latent model sees 32x32 autoencoder features of them) and returns (image in [-1, 1], its
  captions);
- :func:`precompute_features` encodes every image's captions with a :mod:`bench.text` encoder
  and writes one safetensors file per image (``FEATURES/<image id>.safetensors``, tensor
  ``context`` of (captions, L, E)), atomically, skipping files already written, so an
  interrupted run resumes;
- :class:`CocoFeatures` pairs each image with one of its precomputed captions (a random one
  per access, as U-ViT samples a caption per step).

``tests/test_coco.py`` runs all three on a tiny fake folder in COCO's layout.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bench.cache import atomic_write_bytes
from bench.data import DatasetError

__all__ = ["CocoCaptions", "CocoFeatures", "precompute_features"]

COCO_SPLITS = ("train", "val")


class CocoCaptions(Dataset):
    """MS-COCO 2014 ``split`` under ``root``: item i is (image (3, size, size) in [-1, 1], list
    of its captions), images in ascending id order."""

    def __init__(self, root: str | Path, split: str = "train", size: int = 256) -> None:
        if split not in COCO_SPLITS:
            raise DatasetError(f"unknown COCO split {split!r}; valid choices: train, val")
        self.root, self.size = Path(root), size
        ann = self.root / "annotations" / f"captions_{split}2014.json"
        self.images_dir = self.root / f"{split}2014"
        if not ann.is_file() or not self.images_dir.is_dir():
            raise DatasetError(
                f"MS-COCO not found under {self.root}: it needs annotations/{ann.name} and "
                f"{self.images_dir.name}/ (from cocodataset.org, 2014 release)"
            )
        try:
            meta = json.loads(ann.read_text())
            files = {im["id"]: im["file_name"] for im in meta["images"]}
            captions: dict[int, list[str]] = {}
            for a in meta["annotations"]:
                captions.setdefault(a["image_id"], []).append(a["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{ann} is not a COCO captions file: {e}") from e
        self.ids = sorted(i for i in files if captions.get(i))
        self.files, self.captions = files, captions

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Tensor:
        """Image i, centre-cropped to a square and resized to ``size``, in [-1, 1]."""
        import torchvision.transforms.v2.functional as TF
        from PIL import Image

        with Image.open(self.images_dir / self.files[self.ids[i]]) as im:
            x = TF.pil_to_tensor(im.convert("RGB"))  # (3, H, W) uint8
        side = min(x.shape[1:])
        x = TF.center_crop(x, [side, side])
        x = TF.resize(x, [self.size, self.size], antialias=True)
        return x.float() / 127.5 - 1.0

    def __getitem__(self, i: int) -> tuple[Tensor, list[str]]:
        return self.image(i), self.captions[self.ids[i]]


def precompute_features(
    ds: CocoCaptions, encoder, out: str | Path, length: int = 77, progress: bool = True
) -> Path:
    """Encode every image's captions once (``encoder``: a :class:`bench.text.TextEncoder`) into
    ``out/<image id>.safetensors`` (``context``: (captions, length, dim)); files already there
    are kept, each is written atomically. Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(ds)), desc="COCO captions", disable=not progress):
        path = out / f"{ds.ids[i]}.safetensors"
        if path.exists():
            continue
        ctx = encoder.encode(ds.captions[ds.ids[i]], length)
        meta = {"encoder": encoder.name, "image_id": str(ds.ids[i])}
        atomic_write_bytes(path, st_save({"context": ctx.contiguous()}, metadata=meta))
    return out


class CocoFeatures(Dataset):
    """(image, context of one of its captions) pairs: the image from ``images`` and a caption's
    precomputed states from ``features`` (see :func:`precompute_features`), the caption drawn
    at random on each access (seeded by ``seed``)."""

    def __init__(self, images: CocoCaptions, features: str | Path, seed: int = 0) -> None:
        self.images, self.features = images, Path(features)
        missing = [i for i in images.ids if not (self.features / f"{i}.safetensors").exists()]
        if missing:
            raise DatasetError(
                f"{len(missing)} images have no precomputed captions under {self.features} "
                f"(e.g. id {missing[0]}); run bench.coco.precompute_features first"
            )
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        data = (self.features / f"{self.images.ids[i]}.safetensors").read_bytes()
        ctx = st_load(data)["context"]  # (captions, L, E)
        return self.images.image(i), ctx[self.rng.randrange(ctx.shape[0])]
