"""The DeeDiff / AdaDiff ablation: which departure or which scale effect explains the gap.

``python -m bench.studies.ablation`` runs ``bench/sweeps/deediff.toml`` through the grid
(cached models and records are reused; an interrupted run resumes) and writes, under ``--out``
(``results/deediff``):

- ``ablation.md``: per variant (depth, fine-tune budget, UAL weighting, exit rule) the FID at
  full depth against the equally-trained ``full-ft`` control, and the FID at each target FLOP
  ratio; every baseline at the same ratios; the issue's three targets, each with its measured
  numbers and met / not met;
- ``layer_mse.md``: each model's per-block readout MSE on the held-out digits (what an exit
  after each block leaves; the last block's is L_simple on unseen data);
- ``report/ablation_fid_vs_flops``: FID against the FLOP ratio per call, one panel per (depth,
  budget), the control's full-depth FID and 1.10x that drawn as lines;
- ``report/ablation_heatmaps``: exit block x timestep of each ``uem`` variant at FLOP ratio 0.5;
- ``report/composition``: FID against *total* FLOPs (vs DDPM with all T steps) with one curve
  per strategy (fewer steps, exits at each step count, pruning, pruning + exits) and the
  Pareto front: the paper's claim that adaptive computation composes with both;
- the grid report (``bench.report``) of the same records.

``--report-only`` redraws from the records without running cells.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cli import make_parser
from bench.report import load_table, make_report
from bench.studies.ablation_figures import plot_ablation, plot_composition, plot_uem_heatmaps
from bench.studies.ablation_tables import ablation_table
from blockloop.model import forward_all

__all__ = ["layer_mse", "main", "write_ablation"]

log = logging.getLogger(__name__)

SWEEP = Path(__file__).parents[1] / "sweeps" / "deediff.toml"


@torch.inference_mode()
def layer_mse(model, schedule, images, seed: int = 0, repeats: int = 4) -> list[float]:
    """Per-block readout MSE against the true noise on ``images`` (held-out digits) at
    timesteps drawn uniformly from [0, T): the denoising error an exit after each block leaves.
    The last entry is the full model's training objective, L_simple, on unseen data."""
    gen = torch.Generator().manual_seed(seed)
    ab = schedule.alphas_cumprod.float()
    sums = torch.zeros(model.depth, dtype=torch.float64)
    for _ in range(repeats):
        t = torch.randint(0, schedule.T, (images.shape[0],), generator=gen)
        eps = torch.randn(images.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * images + (1 - a).sqrt() * eps
        for i, out in enumerate(forward_all(model, x_t, t.float())):
            sums[i] += float(((out - eps) ** 2).mean())
    return (sums / repeats).tolist()


def layer_mse_table(df, cache, device: str = "cpu") -> str:
    """Markdown: the per-block held-out MSE of every unpruned, unguided model in the records."""
    import pandas as pd

    from bench.cell import Cell, cell_train_config
    from bench.data import as_tensors, load_dataset
    from bench.train import load_or_train

    lines = [
        "# Per-block denoising MSE on the held-out digits",
        "",
        "Readout after each block vs the true noise, t uniform in [0, T), 4 x 359 draws "
        "(`bench.studies.ablation.layer_mse`). "
        "The last column is L_simple of the full-depth model.",
        "",
    ]
    models = df[(df.prune_ratio == 0) & df.guidance.isna()].drop_duplicates(
        ["dataset", "model", "recipe", "finetune_steps", "lambda_u", "lambda_ual"]
    )
    images = {}
    for model_name, sub in models.groupby("model", sort=False):
        rows = []
        for _, r in sub.iterrows():
            ft = None if pd.isna(r.finetune_steps) else int(r.finetune_steps)
            cell = Cell(
                dataset=r.dataset,
                model=r.model,
                recipe=r.recipe,
                finetune_steps=ft,
                lambda_u=float(r.lambda_u),
                lambda_ual=float(r.lambda_ual),
            )
            tm = load_or_train(cell_train_config(cell), cache, device, progress=False)
            if r.dataset not in images:
                images[r.dataset] = as_tensors(load_dataset(r.dataset, "heldout"))[0]
            mse = layer_mse(tm.model, tm.schedule, images[r.dataset].to(device))
            rows.append((cell.model_label(), mse))
        depth = len(rows[0][1])
        lines += [f"## {model_name} ({depth} blocks)", ""]
        lines += ["| model | " + " | ".join(f"b{i + 1}" for i in range(depth)) + " |"]
        lines += ["|---|" + "---|" * depth]
        for name, mse in sorted(rows, key=lambda kv: kv[1][-1]):
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in mse) + " |")
        lines.append("")
    return "\n".join(lines)


def write_ablation(
    grid_dir: Path, cache: ArtifactCache | None = None, device: str = "cpu"
) -> list[Path]:
    """The tables and figures of the ablation from the records under ``grid_dir`` (the
    per-block MSE table loads each model from ``cache``)."""
    import matplotlib

    matplotlib.use("Agg")
    df = load_table(grid_dir)
    ok = df[~df.nonfinite.astype(bool) & df.fid.notna()].copy()
    defaults = {"finetune_steps": None, "patience": None, "lambda_u": 1.0, "lambda_ual": 1.0}
    for name, default in defaults.items():  # records written before the field existed
        if name not in ok:
            ok[name] = default
        elif default is not None:
            ok[name] = ok[name].fillna(default)
    out = grid_dir / "report"
    # The ablation's own sampler and steps: the run with the most cells (DDIM 20 by default).
    main_run = ok[ok.run == ok.run.value_counts().idxmax()]
    atomic_write_bytes(grid_dir / "ablation.md", ablation_table(main_run).encode())
    paths = [grid_dir / "ablation.md"]
    paths += plot_ablation(main_run, out)
    paths += plot_uem_heatmaps(main_run, out)
    paths += plot_composition(ok, out)
    mse = layer_mse_table(main_run, cache or ArtifactCache(), device)
    atomic_write_bytes(grid_dir / "layer_mse.md", mse.encode())
    return [*paths, grid_dir / "layer_mse.md"]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.studies.ablation``: run the sweep (unless ``--report-only``), then
    write the tables and figures; returns the grid's exit status."""
    p = make_parser("bench.studies.ablation", __doc__)
    p.add_argument("--config", type=Path, default=SWEEP, help="the ablation's sweep file")
    p.add_argument(
        "--out", type=Path, default=Path("results/deediff"), help="records, tables and figures"
    )
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: each cell's)")
    p.add_argument("--report-only", action="store_true", help="draw from existing records")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rc = 0
    if not a.report_only:
        from bench import grid

        args = ["--config", str(a.config), "--out", str(a.out)]
        args += ["--cache-dir", a.cache_dir] if a.cache_dir else []
        args += ["--device", a.device] if a.device else []
        rc = grid.main(args, prog="bench.studies.ablation")
    try:
        cache = ArtifactCache(a.cache_dir)
        device = a.device or "cpu"
        paths = write_ablation(a.out, cache, device) + make_report(a.out, a.out / "report")
    except ValueError as e:
        p.error(str(e))
    print((a.out / "ablation.md").read_text())
    for path in paths:
        print(path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
