"""The DeeDiff ablation's tables: variants of the records, aggregated over seeds, against the
equally-trained control, and the issue's targets (used by :mod:`bench.studies.ablation`)."""

from __future__ import annotations

import re

import numpy as np

from bench.train import TrainConfig
from models import MODELS

__all__ = ["FT_DEFAULT", "TARGETS", "ablation_table", "aggregate", "variants"]

TARGETS = (0.8, 0.65, 0.5, 0.4)
FT_DEFAULT = TrainConfig().finetune_steps  # a cell that leaves them unset gets these


def variants(df):
    """The ablation's cells (unpruned, unguided) with the trained ``model_name``, a ``variant``
    name (model and exit rule) and the ``setting`` (depth and fine-tune budget) it belongs to;
    the pre-trained `full` model is listed in its depth's settings as a reference."""
    df = df[(df.prune_ratio == 0) & df.guidance.isna()].copy()
    ft = df.finetune_steps.fillna(FT_DEFAULT).astype(int)
    depth = df.model.map(lambda m: MODELS[m]["depth"])
    df["setting"] = "depth " + depth.map(str) + ", ft " + ft.map(str)
    patience = df.patience.map(lambda p: "" if p != p or p is None else f" p{int(p)}")
    lual = df.lambda_ual.map(
        lambda v: " (L_u only)" if v == 0 else "" if v == 1 else f" (lambda_UAL {v:g})"
    )
    df["model_name"] = df.recipe + lual  # the trained model
    df["variant"] = np.where(
        df.policy == "full", df.model_name + " @full", df.model_name + " / " + df.policy + patience
    )
    return df


def _order(group) -> tuple:
    """Settings in numeric order (depth 9 before 13, 1k before 4k steps), then the run."""
    (setting, run), _ = group
    return (*(int(n) for n in re.findall(r"\d+", setting)), run)


def aggregate(df):
    """One row per (setting, run, variant, target FLOP ratio; 1.0 = full depth): FID mean, its
    standard deviation over sampling seeds (``fid_sd``, NaN for one seed), ``n`` seeds and the
    mean achieved FLOP ratio per call."""
    v = variants(df)
    v["target"] = np.where(v.policy == "full", 1.0, v.target_flop_ratio.astype(float))
    v = v[v.target.notna()]
    keys = ["setting", "run", "variant", "model_name", "recipe", "policy", "target"]
    return v.groupby(keys, as_index=False).agg(
        fid=("fid", "mean"),
        fid_sd=("fid", "std"),
        n=("fid", "size"),
        flop=("flop_ratio_per_call", "mean"),
    )


def _control(agg, setting: str, run: str):
    c = agg[(agg.variant == "full-ft @full") & (agg.setting == setting) & (agg.run == run)]
    return float(c.fid.iloc[0]) if len(c) else None


def _fid(r) -> str:
    return f"{r.fid:.2f}" + (f" ± {r.fid_sd:.2f} (n={r.n})" if r.n > 1 else "")


def ablation_table(df) -> str:
    """Markdown: per setting and run, each model's full-depth FID against the control, and
    each exit variant's FID (achieved FLOP ratio) at every target; then the targets."""
    lines = ["# DeeDiff / AdaDiff ablation", ""]
    agg = aggregate(df)
    for (setting, run), sub in sorted(agg.groupby(["setting", "run"]), key=_order):
        control = _control(agg, setting, run)
        lines += [f"## {setting}, {run} (control `full-ft` FID: {_f(control)})", ""]
        lines += ["| model | FID at full depth | vs control |", "|---|---|---|"]
        for _, r in sub[sub.policy == "full"].sort_values("fid").iterrows():
            rel = f"{r.fid / control:.3f}x" if control else "-"
            lines.append(f"| {r.model_name} | {_fid(r)} | {rel} |")
        exits = sub[sub.policy != "full"]
        if len(exits):
            head = " | ".join(f"@{t}" for t in TARGETS)
            lines += ["", f"| exit variant | {head} |", "|---|" + "---|" * len(TARGETS)]
            for name, v in sorted(exits.groupby("variant"), key=lambda kv: kv[1].fid.mean()):
                cells = []
                for t in TARGETS:
                    hit = v[np.isclose(v.target, t)]
                    cells.append(
                        f"{_fid(hit.iloc[0])} ({hit.flop.iloc[0]:.2f})" if len(hit) else "-"
                    )
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "FID (achieved FLOP ratio per call; ± the standard deviation over sampling seeds where "
        "more than one ran); control = `full-ft`, the same fine-tune with L_simple alone.",
        "",
        "## Targets (issue 13)",
        "",
        *_targets(agg),
        "",
        "## Paired by sampling seed (same initial noise): FID minus the control's",
        "",
        *_paired(variants(df)),
        "",
    ]
    return "\n".join(lines)


def _paired(v) -> list[str]:
    """Per setting: each variant at full depth and at each target, minus the control at full
    depth, over the sampling seeds both ran (a paired difference cancels most of the noise
    that 1,000-sample FIDs share through their initial noise)."""
    out = []
    for (setting, run), sub in sorted(v.groupby(["setting", "run"]), key=_order):
        control = sub[sub.variant == "full-ft @full"].set_index("seed").fid
        for (name, target), w in sorted(
            sub.groupby(["variant", sub.target_flop_ratio.fillna(1.0)]), key=lambda kv: kv[0]
        ):
            diff = (w.set_index("seed").fid - control).dropna()
            if name == "full-ft @full" or len(diff) < 2:
                continue
            out.append(
                f"- {setting}, {run}: {name} @{target:g}: {diff.mean():+.2f} ± {diff.std():.2f} "
                f"over seeds {sorted(diff.index.tolist())} ({', '.join(f'{d:+.2f}' for d in diff)})"
            )
    return out or ["- (no variant with two or more seeds shared with the control)"]


def _targets(agg) -> list[str]:
    out = []
    for (setting, run), sub in sorted(agg.groupby(["setting", "run"]), key=_order):
        control = _control(agg, setting, run)
        full_depth = sub[sub.variant == "uem @full"]
        if control is None or not len(full_depth):
            continue
        f = float(full_depth.fid.iloc[0])
        out.append(
            f"- {setting}, {run}: `uem` at full depth {f:.2f} vs control {control:.2f}: "
            f"{'met' if f <= control else 'not met'}"
        )
        exits = sub[sub.variant == "uem / uem"]
        low = exits[exits.flop <= 0.55]
        if len(low):
            best = low.loc[low.fid.idxmin()]
            ok = best.fid <= 1.10 * control
            out.append(
                f"  - at FLOP ratio {best.flop:.2f}: {best.fid:.2f} vs "
                f"1.10 x control = {1.10 * control:.2f}: {'met' if ok else 'not met'}"
            )
        base = sub[~sub.recipe.str.startswith("uem") & (sub.policy != "full")]
        for t in (0.8, 0.65, 0.5):
            mine, theirs = exits[np.isclose(exits.target, t)], base[np.isclose(base.target, t)]
            if len(mine) and len(theirs):
                best = theirs.loc[theirs.fid.idxmin()]
                ok = mine.fid.iloc[0] < best.fid
                out.append(
                    f"  - @{t}: `uem` {mine.fid.iloc[0]:.2f} vs best baseline {best.policy} "
                    f"{best.fid:.2f}: {'met' if ok else 'not met'}"
                )
    return out or ["- (no control or `uem` full-depth cell yet)"]


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"
