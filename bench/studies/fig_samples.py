"""The samples figure: the first samples of chosen cells beside real training images."""

from __future__ import annotations

import logging
from pathlib import Path

from bench.studies.plotting import Saver, save

log = logging.getLogger(__name__)

SAMPLE_TILES = 6  # the samples figure shows the first 6 x 6 samples of each chosen cell


def sample_run(ok):
    """The sampler run (sampler and steps) holding the most policies, FID breaking ties: the
    cells compared in the samples figure share it and their seed, so every panel starts from
    the same initial noise and differs only by what the policy does."""
    counts = ok.groupby("run").agg(policies=("policy", "nunique"), fid=("fid", "mean"))
    return counts.sort_values(["policies", "fid"], ascending=[False, True]).index[0]


def tiles(img, img_size: int, n: int):
    """The top-left ``n`` x ``n`` samples of a saved grid (:func:`bench.sampling.save_grid`)."""
    from bench.sampling import GRID_PADDING, GRID_SCALE

    side = (n * (img_size + GRID_PADDING) + GRID_PADDING) * GRID_SCALE
    return img.crop((0, 0, min(side, img.width), min(side, img.height)))


def _real_tiles(dataset: str, n: int, data=None):
    """``n`` x ``n`` real training images as one grid image, or None where the data set
    cannot be read here (it is then left out, with a log line)."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from bench.data import DatasetError, as_tensors, data_source

    try:
        images, _ = as_tensors(data_source(data).load(dataset, "train"))
    except (DatasetError, OSError, ValueError) as e:
        log.info("no real-image panel: %s", e)
        return None
    from bench.sampling import GRID_PADDING

    g = torch.Generator().manual_seed(0)
    pick = images[torch.randperm(len(images), generator=g)[: n * n]]
    grid = make_grid(pick.clamp(-1, 1).add(1).div(2), nrow=n, padding=GRID_PADDING, pad_value=1.0)
    arr = (grid[0].numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def plot_samples(
    df, grid_dir: Path, out: Path, patterns: list[str] | None, data=None, *, save: Saver = save
):
    """The first 6 x 6 samples of chosen cells beside 36 real training images, drawn large
    (nearest-neighbour, one sample is many pixels). Default choice: in the sampler run with
    the most policies, the best FID of each policy at the first seed, so panels share their
    initial noise; ``patterns`` picks cells by label instead."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from bench.data import dataset_info

    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()]
    if patterns:
        chosen = matching(ok, patterns)
        note = "chosen cells"
    else:
        run = sample_run(ok)
        pool = ok[(ok.run == run) & (ok.seed == ok[ok.run == run].seed.min())]
        chosen = pool.loc[pool.groupby("method").fid.idxmin()].sort_values("fid")
        note = f"{run}, seed {int(pool.seed.iloc[0])}: the same initial noise in every panel"
    items = []
    for _, r in chosen.iterrows():
        path = grid_dir / "samples" / f"{r.key}.png"
        if path.exists():
            size = dataset_info(r.dataset).img_size
            items.append(
                (
                    f"{r.label}\nFID {r.fid:.2f}, FLOPs/call {r.flop_ratio_per_call:.2f}",
                    tiles(Image.open(path), size, SAMPLE_TILES),
                )
            )
    if not items:
        return []
    real = _real_tiles(chosen.dataset.iloc[0], SAMPLE_TILES, data)
    if real is not None:
        items.insert(0, ("real training images", real))
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    for ax, (title, img) in zip(axes.flat, items, strict=False):
        ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    fig.suptitle(f"First {SAMPLE_TILES * SAMPLE_TILES} samples ({note})", fontsize=9)
    paths = save(fig, out, "samples")
    plt.close(fig)
    return paths


def matching(df, patterns: list[str]):
    """The cells whose label contains any of ``patterns`` (a ValueError if none does)."""
    chosen = df[df.label.apply(lambda s: any(p in s for p in patterns))]
    if not len(chosen):
        raise ValueError(
            f"no cell label contains any of {patterns}; labels: {sorted(df.label)[:8]}..."
        )
    return chosen
