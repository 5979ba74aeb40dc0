"""Where the wall-clock of an exit pipeline goes: the executor's time split by component, beside
its FLOP split (issue 35).

``python -m bench.studies.wallsplit --policies full static uem pabee calm --target 0.65`` builds
each policy's cell (its own recipe's model, DDIM 20, calibrated to the target), captures the
denoiser calls of one batch of ``--batch`` samples, and replays them through the executor with
timers around each component, exclusive of the components they call:

- ``embed``: patchify and the conditioning tokens;
- ``blocks``: the transformer blocks (the model's ``run_block``, or the policy's for DyDiT);
- ``readout``: the output head, where an exit or a policy reads eps;
- ``exit heads``: DeeDiff's UEMs and BERxiT's LTE;
- ``rule``: the exit rule's own arithmetic (``decide``, less the reads above);
- ``exit``: writing the leaving rows out and compacting the rest (``_exit`` and ``keep``);
- ``other``: the rest of the call: the loop, dispatch and the one host sync per block.

Times are the median over ``--repeats`` replays, divided by the plain model's forward over the
same calls (timed interleaved); FLOPs are the executor's meter split into blocks and the rest
(embedding, readouts, heads), divided by the plain forward's. Writes ``wallsplit.csv``,
``wallsplit.md`` and ``wallsplit.png`` (two stacked bars per policy) to ``--out``.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from adaptive.policies import POLICIES
from bench.cache import ArtifactCache, atomic_write_bytes
from bench.cell import Cell
from bench.cli import make_parser
from bench.pipeline import build_pipeline
from bench.studies.plotting import write_png
from blockloop import executor as executor_mod
from models import MODELS

__all__ = ["COMPONENTS", "main", "split_wall"]

COMPONENTS = ("embed", "blocks", "readout", "exit heads", "rule", "exit", "other")


class _Timers:
    """Exclusive time per component: a call's time less the time of timed calls inside it."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(COMPONENTS, 0.0)
        self._stack: list[float] = []  # time spent in timed children, per open call

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                children = self._stack.pop()
                self.seconds[name] += spent - children
                if self._stack:
                    self._stack[-1] += spent

        return timed


@contextmanager
def _instrumented(ex, timers: _Timers):
    """Timers around the executor's components (instance attributes, removed afterwards)."""
    model, policy = ex.model, ex.policy
    patches = [(model, "embed", "embed"), (model, "readout", "readout")]
    heads = [(getattr(model, "uem", None), "uncertainty"), (getattr(model, "lte", None), "score")]
    patches += [(obj, a, "exit heads") for obj, a in heads if obj is not None]  # models.heads
    owner = policy if policy.runs_blocks else model
    patches += [(owner, "run_block", "blocks"), (policy, "decide", "rule"), (ex, "_exit", "exit")]
    for obj, attr, name in patches:
        object.__setattr__(obj, attr, timers.wrap(name, getattr(obj, attr)))
    keep = executor_mod._Run.keep
    executor_mod._Run.keep = timers.wrap("exit", keep)
    try:
        yield
    finally:
        executor_mod._Run.keep = keep
        for obj, attr, _ in patches:
            object.__delattr__(obj, attr)


def _replay(fn, calls) -> float:
    t0 = time.perf_counter()
    for x, t, c in calls:
        fn(x, t, c)
    return time.perf_counter() - t0


@torch.inference_mode()
def split_wall(pipe, calls, repeats: int) -> dict[str, float]:
    """Per component: median seconds over ``repeats`` replays of ``calls`` / the plain
    forward's; plus the FLOP split and the total wall and FLOP ratios."""
    ex, plain = pipe.executor, pipe.base.model
    runs, refs = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        refs.append(_replay(plain, calls))
        timers = _Timers()
        ex.reset()
        with _instrumented(ex, timers):
            total = _replay(ex, calls)
        timers.seconds["other"] = total - sum(timers.seconds.values())
        runs.append(timers.seconds)
    ref = statistics.median(refs[1:])
    row = {k: statistics.median(r[k] for r in runs[1:]) / ref for k in COMPONENTS}
    row["wall_ratio"] = sum(row[k] for k in COMPONENTS)
    if ex.policy.runs_blocks:  # dynamic width: everything but the embedding and the readout
        blocks = ex.executed_flops - ex.rows * (ex.costs.embed + ex.costs.readout)
    else:
        ran = torch.cat(ex.trace.exit_block)
        blocks = sum(c * int((ran >= i).sum()) for i, c in enumerate(ex.costs.blocks))
    plain_flops = ex.rows * ex.costs.full
    row["flops_blocks"] = blocks / plain_flops
    row["flops_rest"] = (ex.executed_flops - blocks) / plain_flops
    row["flop_ratio"] = ex.flop_ratio
    return row


def _cell(policy: str, a) -> Cell:
    cls, target, steps, batch = POLICIES[policy], a.target, a.steps, a.batch
    return Cell(
        model=a.model,
        policy=policy,
        recipe=cls.recipe,
        target_flop_ratio=None if cls.knob_name is None else target,
        steps=steps,
        samples=batch,
    )


def _figure(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(df), 4.2), layout="constrained")
    x = range(len(df))
    bottom = [0.0] * len(df)
    for name in COMPONENTS:
        vals = df[name].tolist()
        ax.bar([i - 0.2 for i in x], vals, 0.38, bottom=bottom, label=f"wall: {name}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.bar([i + 0.2 for i in x], df["flops_blocks"], 0.38, color="0.35", label="FLOPs: blocks")
    ax.bar(
        [i + 0.2 for i in x],
        df["flops_rest"],
        0.38,
        bottom=df["flops_blocks"],
        color="0.7",
        label="FLOPs: embed, readouts, heads",
    )
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.set_xticks(list(x), df["policy"])
    ax.set_ylabel("/ plain forward (left bar: wall-clock, right bar: FLOPs)")
    ax.set_title("Where the executor's time goes", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    write_png(fig, out / "wallsplit.png")


def _parser():
    p = make_parser("bench.studies.wallsplit", __doc__)
    p.add_argument(
        "--policies",
        nargs="+",
        default=["full", "static", "uem", "pabee", "calm"],
        choices=list(POLICIES),
        help="exit policies, each on its own recipe's model",
    )
    p.add_argument("--model", default="tiny", choices=list(MODELS), help="size by name")
    p.add_argument("--target", type=float, default=0.65, help="FLOP ratio the knobs calibrate to")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (calls captured)")
    p.add_argument("--batch", type=int, default=250, help="rows per call")
    p.add_argument("--repeats", type=int, default=3, help="timed replays (after one warm-up)")
    p.add_argument("--out", default="results/wallsplit", help="output folder")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0 on success, 2 on bad arguments."""
    from bench.run import _Capture

    p = _parser()
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.repeats < 1:
        p.error(f"--steps, --batch and --repeats must be >= 1, got {a.steps} {a.batch} {a.repeats}")
    try:
        cells = [_cell(name, a) for name in a.policies]
    except ValueError as e:
        p.error(str(e))
    cache, rows = ArtifactCache(a.cache_dir), []
    for cell in cells:
        pipe = build_pipeline(cell, cache)
        capture = _Capture(pipe.executor, first=cell.steps)
        pipe.sample(cell.samples, cell.seed, denoiser=pipe.denoiser(capture))
        rows.append({"policy": cell.policy, **split_wall(pipe, capture.calls, a.repeats)})
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "wallsplit.csv", df.to_csv(index=False).encode())
    md = df.to_markdown(index=False, floatfmt=".3f")
    atomic_write_bytes(out / "wallsplit.md", md.encode())
    _figure(df, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
