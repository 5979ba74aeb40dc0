"""The tables of a sweep's records: ``table.csv`` / ``table.parquet`` (every record) and
``summary.md`` (every cell, the best FID per FLOP budget with the cells within noise of it,
and the cells flagged timing-unstable, nonfinite or failed). :mod:`bench.store` re-exports
:func:`write_tables`."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from bench.cache import atomic_write_bytes
from bench.intervals import Z, distinguishable

__all__ = ["KID_NOTE", "write_tables"]


KID_NOTE = (
    "KID: the unbiased squared MMD with the cubic kernel k(x, y) = (x.y / d + 1)^3 on the "
    "extractor's d-dimensional features (Binkowski et al. 2018), as a raw number in those "
    "features' units. It is comparable only between rows of one extractor, never with the "
    "Inception KID x 10^3 that papers print."
)


def write_tables(
    out: Path, records: list[dict[str, Any]], failures: list[dict[str, Any]] = ()
) -> None:
    """``table.csv`` and ``table.parquet`` (every record), ``summary.md`` (every cell and the
    best FID per FLOP budget; failed cells listed with their error), all written atomically."""
    import pandas as pd

    if not records:
        return
    df = pd.DataFrame(records).sort_values(["flop_ratio_vs_reference", "label"])
    atomic_write_bytes(out / "table.csv", df.to_csv(index=False).encode())
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out / "table.parquet", buf.getvalue())
    sections = (
        _cells_table(df),
        ["", KID_NOTE],
        _budget_table(df),
        _timing_unstable(df),
        _nonfinite(df),
        _failed(failures),
    )
    lines = [line for section in sections for line in section]
    atomic_write_bytes(out / "summary.md", ("\n".join(lines) + "\n").encode())


def _summary_columns(df) -> list[str]:
    """The summary's columns: the fixed ones, plus those the records carry values for
    (agreement of conditional cells, PSNR / SSIM of paired ones, the timing flag)."""
    cols = [
        "label",
        "seed",
        "nfe",
        "flop_ratio_per_call",
        "flop_ratio_vs_reference",
        "layer_ratio",
        "fid",
        "kid",
        "seconds_per_image",
        "nonfinite",
    ]
    if "fid_boot_sd" in df and df.fid_boot_sd.notna().any():  # FID's noise (bench.intervals)
        cols.insert(cols.index("fid") + 1, "fid_boot_sd")
    if "kid_boot_sd" in df and df.kid_boot_sd.notna().any():
        cols.insert(cols.index("kid") + 1, "kid_boot_sd")
    if "agreement" in df and df.agreement.notna().any():  # conditional cells
        cols.insert(cols.index("kid") + 1, "agreement")
    for name in ("psnr", "ssim"):  # paired with the uncompressed pipeline (bench.paired)
        if name in df and df[name].notna().any():
            cols.insert(cols.index("seconds_per_image"), name)
    if "timing_unstable" in df:  # records from before the flag existed lack it
        cols.append("timing_unstable")
    return cols


def _cells_table(df) -> list[str]:
    """The summary's title and its table of every cell (``df``'s order), as markdown lines."""
    cols = _summary_columns(df)
    lines = [
        f"# Grid summary ({len(df)} cells, extractor {sorted(set(df.extractor.dropna()))})",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return lines


def _sd(r) -> float:
    """A record's FID bootstrap sd (NaN for records from before it was measured)."""
    v = r.get("fid_boot_sd")
    return float("nan") if v is None else float(v)


def _budget_table(df) -> list[str]:
    """The best finite FID within each total-FLOP budget, a budget left out when its best cell
    is the previous budget's, as markdown lines (a leading blank line included); with the
    cells of the budget whose FID is within noise of the best (:mod:`bench.intervals`)."""
    ok = df[~df.nonfinite & df.fid.notna()]
    lines = [
        "",
        "## Best FID per total-FLOP budget (vs DDPM, all T steps, full model)",
        "",
        "A budget whose best cell is the same as the previous budget's is left out. FID +- "
        f"{Z} x its bootstrap sd over the samples; *ties*: the other cells of the budget whose "
        "FID is not distinguishable from the best's (their gap is inside the noise of both), "
        "so the best is not a finding over them.",
        "",
        "| budget <= | cell | seed | FID | FLOP ratio | ties |",
        "|---|---|---|---|---|---|",
    ]
    last = None
    for budget in (0.005, 0.01, 0.02, 0.05, 0.1, 1.0):
        within = ok[ok.flop_ratio_vs_reference <= budget]
        if not len(within):
            continue
        b = within.loc[within.fid.idxmin()]
        if b.key == last:
            continue
        last = b.key
        ties = sum(
            not distinguishable(b.fid, _sd(b), r.fid, _sd(r))
            for _, r in within.iterrows()
            if r.key != b.key
        )
        fid = f"{b.fid:.3f}" + ("" if math.isnan(_sd(b)) else f" +- {Z * _sd(b):.2f}")
        lines.append(
            f"| {budget} | {b.label} | {b.seed} | {fid} | {b.flop_ratio_vs_reference:.4f} | "
            f"{ties} |"
        )
    return lines


def _timing_unstable(df) -> list[str]:
    """The section listing cells flagged ``timing_unstable`` (none: no lines)."""
    if not ("timing_unstable" in df and df.timing_unstable.fillna(False).astype(bool).any()):
        return []
    flagged = df[df.timing_unstable.fillna(False).astype(bool)]
    lines = ["", f"## Timing unstable ({len(flagged)}; wall-clock not trusted)", ""]
    lines += [
        "The plain model's or the cell's timing varied by more than 25% between repeats "
        "(the fastest and slowest left out), twice (a busy "
        "machine): delete these records and rerun on an idle machine to time them.",
        "",
    ]
    return lines + [f"- {r.label} ({r.key})" for r in flagged.itertuples()]


def _nonfinite(df) -> list[str]:
    """The section listing cells whose samples were not finite (none: no lines)."""
    bad = df[df.nonfinite.fillna(False).astype(bool)]
    if not len(bad):
        return []
    lines = ["", f"## Nonfinite cells ({len(bad)}; stored, never scored)", ""]
    lines += [
        "Their samples hold NaN or inf (a diverging sampler or guidance scale): the record "
        "is kept so the cell is not rerun; FID and KID are empty.",
        "",
    ]
    return lines + [f"- {r.label} ({r.key})" for r in bad.itertuples()]


def _failed(failures: list[dict[str, Any]]) -> list[str]:
    """The section listing failed cells with their error's first line (none: no lines)."""
    if not failures:
        return []
    lines = ["", f"## Failed cells ({len(failures)}; rerun to retry)", ""]
    return lines + [f"- {f['label']} ({f['key']}): {f['error'].splitlines()[0]}" for f in failures]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
