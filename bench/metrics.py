"""FID and KID against cached reference statistics, shaped like clean-fid.

Features come from a :class:`FeatureExtractor` whose ``name`` travels with every number, so
results from different extractors are never mixed:

- ``cnn`` (offline default): a small classifier trained on the dataset's train split and cached
  like a checkpoint; features are its penultimate layer. Its held-out accuracy is logged.
- ``inception``: clean-fid's InceptionV3 (``mode="clean"``) when its weights are on disk.

FID is the Frechet distance between Gaussians fitted to the features (Heusel et al. 2017, Eq. 6);
KID the unbiased squared MMD with the cubic polynomial kernel (Binkowski et al. 2018), averaged
over subsets as clean-fid does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.cache import OMIT_DEFAULT, ArtifactCache, config_hash
from bench.data import DataSource, as_tensors, data_source, dataset_info
from bench.intervals import bootstrap_sd, kid_bootstrap_sd

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "Stats",
    "class_agreement",
    "fid_floor",
    "fid_from_feats",
    "frechet_distance",
    "get_extractor",
    "inception_weights",
    "kid_from_feats",
    "reference_stats",
]

log = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    """Images -> features, and the ``name`` that travels with every number made from them."""

    name: str

    def __call__(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> features (B, F), float64 on the CPU."""
        ...


# ----- statistics -----


@dataclass
class Stats:
    """Features (N, F) with their mean ``mu`` (F,) and covariance ``sigma`` (F, F)."""

    mu: np.ndarray
    sigma: np.ndarray
    feats: np.ndarray

    @classmethod
    def of(cls, feats: np.ndarray | Tensor) -> Stats:
        """The statistics of the features ``feats`` (N, F), in float64."""
        f = np.asarray(feats, dtype=np.float64)
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), f)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum and is stable (no complex sqrtm).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_feats(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID of two feature sets (N, F): :func:`frechet_distance` of their Gaussians."""
    a, b = Stats.of(feats1), Stats.of(feats2)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def kid_from_feats(
    feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000
) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets (seeded)."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    d = f1.shape[1]
    m = min(len(f1), len(f2), max_subset_size)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        a = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += a - 2 * kxy.sum() / (m * m)
    return float(total / num_subsets)


# ----- extractors -----


class DigitsCNN(nn.Module):
    """A small classifier; its 64-d penultimate layer is the feature space. ``stages`` extra
    (max-pool, conv) stages widen the receptive field for larger images: at 28x28 the plain
    net sees ~10 pixels before its global pooling, too little to tell digit shapes apart."""

    def __init__(
        self, channels: int, num_classes: int, feat_dim: int = 64, stages: int = 0
    ) -> None:
        super().__init__()
        deeper = [
            m
            for _ in range(stages)
            for m in (nn.MaxPool2d(2), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())
        ]
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            *deeper,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, feat_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feat_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class CNNExtractorConfig:
    dataset: str = "digits"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    stages: int = field(default=0, metadata=OMIT_DEFAULT)  # DigitsCNN's extra stages


# Per-dataset settings where the defaults do not fit (digits keep them, and so their key):
# 28x28 MNIST needs one more stage (97.2% held-out accuracy, against 84.6% without it).
EXTRACTOR_OVERRIDES: dict[str, dict[str, int]] = {"mnist": {"epochs": 20, "stages": 1}}


class CNNExtractor:
    """Penultimate features of a classifier trained on the dataset (cached by its config)."""

    def __init__(self, net: DigitsCNN, name: str, accuracy: float) -> None:
        self.net = net.eval()
        self.name = name
        self.accuracy = accuracy

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = [self.net.body(b.float()) for b in images.split(512)]
        return torch.cat(out).double()

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """The classifier's predicted class of each image. (N, C, H, W) -> (N,)"""
        x = images.clamp(-1, 1).cpu().float()
        return torch.cat([self.net(b).argmax(1) for b in x.split(512)])


def class_agreement(images: Tensor, classes: Tensor, classifier: CNNExtractor) -> float:
    """The share of ``images`` that ``classifier`` assigns to the class each was asked for:
    text-image (or label-image) agreement without CLIP."""
    return float((classifier.classify(images) == classes.cpu()).float().mean())


def _shift_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random translations by up to one pixel, so features do not hinge on exact alignment."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def _train_cnn(cfg: CNNExtractorConfig, data: DataSource) -> tuple[dict[str, Tensor], dict]:
    info = dataset_info(cfg.dataset)
    if info.num_classes < 2:
        raise ValueError(f"the cnn extractor needs class labels; {cfg.dataset} has none")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xtr, ytr = as_tensors(data.load(cfg.dataset, "train"))
    xte, yte = as_tensors(data.load(cfg.dataset, "heldout"))
    net = DigitsCNN(info.channels, info.num_classes, stages=cfg.stages)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.lr, total_steps=cfg.epochs * ((len(xtr) + cfg.batch_size - 1) // cfg.batch_size)
    )
    for _ in tqdm(range(cfg.epochs), desc="feature extractor", mininterval=1):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(net(_shift_augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    return net.state_dict(), {"config": dataclasses.asdict(cfg), "heldout_accuracy": acc}


def cnn_extractor(
    dataset: str, cache: ArtifactCache | None = None, data: DataSource | None = None
) -> CNNExtractor:
    cfg = CNNExtractorConfig(dataset=dataset, **EXTRACTOR_OVERRIDES.get(dataset, {}))
    key = config_hash(cfg, kind="extractor")
    tensors, meta, cached = (cache or ArtifactCache()).get_or_build(
        "extractor", key, lambda: _train_cnn(cfg, data_source(data))
    )
    info = dataset_info(dataset)
    net = DigitsCNN(info.channels, info.num_classes, stages=cfg.stages)
    net.load_state_dict(tensors)
    acc = meta["heldout_accuracy"]
    log.log(
        logging.DEBUG if cached else logging.INFO,
        "feature extractor cnn-%s-%s: held-out accuracy %.2f%%",
        dataset,
        key[:8],
        100 * acc,
    )
    return CNNExtractor(net, f"cnn-{dataset}-{key[:8]}", acc)


class InceptionExtractor:
    """clean-fid's InceptionV3 pool3 features (2048-d) with its 'clean' preprocessing.

    Images are quantised to uint8, resized to 299x299 with PIL bicubic in float (clean-fid's
    ``mode="clean"``) and fed to the network in [0, 255]. ``weights`` is the path of
    ``inception-2015-12-05.pt`` (clean-fid's TorchScript file; by default its cache, /tmp); nothing
    is downloaded. ``network`` replaces the real one (tests wire a random network through here).
    """

    name = "inception-clean"

    def __init__(
        self, weights: str | Path | None = None, device: str = "cpu", network=None
    ) -> None:
        from cleanfid.resize import make_resizer

        if network is None:
            path = inception_weights(weights)
            from cleanfid.inception_torchscript import InceptionV3W

            network = InceptionV3W(str(path.parent), download=False, resize_inside=False)
        self.net = network.to(device).eval()
        self.device = device
        self.resize = make_resizer("PIL", False, "bicubic", (299, 299))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = []
        for chunk in x.split(64):
            arr = np.stack([self.resize(img.permute(1, 2, 0).numpy()) for img in chunk])
            batch = torch.from_numpy(arr).permute(0, 3, 1, 2).float().to(self.device)
            out.append(self.net(batch).double().cpu())
        return torch.cat(out)


# Where clean-fid caches its weights on Linux/macOS (features.feature_extractor uses "/tmp");
# the environment variable, when set, wins.
CLEANFID_WEIGHTS = Path("/tmp/inception-2015-12-05.pt")
INCEPTION_ENV = "DIFFCOMPRESS_INCEPTION_WEIGHTS"


def inception_weights(weights: str | Path | None = None) -> Path:
    """The path of clean-fid's ``inception-2015-12-05.pt``: ``weights``, else
    ``$DIFFCOMPRESS_INCEPTION_WEIGHTS``, else clean-fid's cache; a ``ValueError`` saying how
    to get it when the file is not there (nothing is downloaded) or clean-fid is missing."""
    path = Path(weights or os.environ.get(INCEPTION_ENV) or CLEANFID_WEIGHTS)
    if not path.is_file():
        raise ValueError(
            f"InceptionV3 weights not found at {path}: set ${INCEPTION_ENV} (or pass "
            "weights=) to clean-fid's inception-2015-12-05.pt, or use the offline 'cnn' extractor"
        )
    if path.name != "inception-2015-12-05.pt":
        raise ValueError(f"expected a file named inception-2015-12-05.pt, got {path.name}")
    if importlib.util.find_spec("cleanfid") is None:
        raise ValueError("the inception extractor needs clean-fid: pip install clean-fid")
    return path


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "cnn": lambda dataset, cache=None, data=None, **_: cnn_extractor(dataset, cache, data),
    "inception": lambda dataset, cache=None, weights=None, device="cpu", **_: InceptionExtractor(
        weights, device
    ),
}


def get_extractor(name: str, dataset: str, cache: ArtifactCache | None = None, **kw):
    """Extractor ``name`` of :data:`EXTRACTORS` for ``dataset`` (``ValueError`` if unknown)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; valid choices: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](dataset, cache=cache, **kw)


def features(extractor: FeatureExtractor, images: Tensor) -> np.ndarray:
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN/Inf; refusing to compute features")
    return extractor(images.clamp(-1, 1).cpu()).numpy()


def reference_stats(
    dataset: str,
    extractor: FeatureExtractor,
    split: str = "train",
    cache: ArtifactCache | None = None,
    data: DataSource | None = None,
) -> Stats:
    """Features of the real ``split``, cached per (dataset, split, extractor)."""
    cache = cache or ArtifactCache()
    key = config_hash({"dataset": dataset, "split": split, "extractor": extractor.name}, "stats")

    def build():
        images, _ = as_tensors(data_source(data).load(dataset, split))
        return {"feats": torch.from_numpy(features(extractor, images))}, {"n": len(images)}

    tensors, _, _ = cache.get_or_build("stats", key, build)
    return Stats.of(tensors["feats"].numpy())


def fid_floor(
    dataset: str,
    extractor: FeatureExtractor,
    cache: ArtifactCache | None = None,
    data: DataSource | None = None,
) -> float:
    """FID of the real held-out images against the training images' statistics: what a
    perfect generator of this data scores at the held-out split's size (the floor every FID
    against the training split is read against)."""
    held = reference_stats(dataset, extractor, "heldout", cache, data)
    train = reference_stats(dataset, extractor, "train", cache, data)
    return frechet_distance(held.mu, held.sigma, train.mu, train.sigma)


def evaluate(
    images: Tensor,
    dataset: str,
    extractor: FeatureExtractor,
    cache: ArtifactCache | None = None,
    split: str = "train",
    data: DataSource | None = None,
) -> dict[str, float | str]:
    """FID and KID of ``images`` against the dataset's ``split`` (the training images by
    default, as the papers do; "heldout" exposes a model that memorises its training set), and
    ``fid_boot_sd`` / ``kid_boot_sd``, their bootstrap sds over the samples
    (:mod:`bench.intervals`)."""
    ref = reference_stats(dataset, extractor, split, cache, data)
    f = features(extractor, images)

    def fid(feats: np.ndarray) -> float:
        gen = Stats.of(feats)
        return frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)

    return {
        "fid": fid(f),
        "fid_boot_sd": bootstrap_sd(f, fid),  # the sampling noise of FID (bench.intervals)
        "kid": kid_from_feats(f, ref.feats),
        "kid_boot_sd": kid_bootstrap_sd(f, ref.feats),  # KID's sampling noise, the same way
        "extractor": extractor.name,
        "n": len(f),
    }
