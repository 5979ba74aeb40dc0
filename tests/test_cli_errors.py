"""A catalogue of bad inputs through the real command lines (subprocesses): each must end with
exit code 2, one ``error:`` line naming what is wrong, no traceback, and nothing written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _files(tmp: Path) -> dict[str, str]:
    """Inputs the cases refer to: {name: path}."""
    (tmp / "in").mkdir()
    bad = {
        "steps_str": '[[cell]]\nmodel = "micro"\nsteps = "ten"\n',
        "nan": "[[cell]]\nguidance = nan\n",
        "stray": '[sweep]\nsampler = "ddim"\n[grid]\nx = 1\n',
        "shape": "cell = 3\n",
        "knob_and_target": (
            '[[cell]]\nrecipe = "uem"\npolicy = "uem"\nknob = 0.1\ntarget_flop_ratio = 0.5\n'
        ),
        "official_cfg": (
            '[[cell]]\nrecipe = "uem"\npolicy = "uem-official"\nguidance = 1.0\n'
            "cfg_exit_together = true\n"
        ),
        "variant": '[[cell]]\nrecipe = "uem-official"\n',
        "order_ddim": '[[cell]]\nsampler = "ddim"\norder = 2\n',
        "order_high": '[[sweep]]\nsampler = "dpm-solver++"\norder = [2, 4]\n',
        "order_steps": '[[cell]]\nsampler = "unipc-bh2"\norder = 3\nsteps = 2\n',
        "spacing": '[[cell]]\nspacing = "karras"\n',
        "end": '[[cell]]\nspacing = "linspace"\nend = "eps"\n',
        "p4_on_digits": '[[cell]]\nmodel = "tiny13-p4"\n',
        "cifar": '[[cell]]\ndataset = "cifar10"\nmodel = "micro"\nsteps = 2\nsamples = 8\n',
        "inception": '[[cell]]\nmodel = "micro"\nsteps = 2\nsamples = 8\nextractor = "inception"\n',
        "huge": f"[sweep]\nseed = {list(range(200))}\nguidance = {[g / 10 for g in range(60)]}\n",
    }
    paths = {}
    for name, body in bad.items():
        paths[name] = tmp / "in" / f"{name}.toml"
        paths[name].write_text(body)
    paths["evil"] = tmp / "in" / "evil.pth"
    paths["evil"].write_bytes(pickle.dumps(_Evil()))
    paths["file"] = tmp / "in" / "a-file"
    paths["file"].write_text("x")
    grid = tmp / "in" / "grid" / "records"
    grid.mkdir(parents=True)
    from test_store import fake_record

    from bench.cell import Cell

    rec = fake_record(Cell(model="micro", steps=2, samples=8))
    (grid / f"{rec['key']}.json").write_text(json.dumps(rec))
    paths["grid"] = grid.parent
    return {k: str(v) for k, v in paths.items()}


CASES = [
    # (module, args; {name} refers to _files, {out} / {cache} to folders that must stay absent)
    ("bench.grid", "--config {steps_str} --out {out}", "field 'steps' must be an integer"),
    ("bench.grid", "--config {nan} --out {out}", "field 'guidance' must be a finite number"),
    ("bench.grid", "--config {stray} --out {out}", "unknown section(s) ['grid']"),
    ("bench.grid", "--config {shape} --out {out}", "'cell' must be [[cell]] tables"),
    ("bench.grid", "--config {knob_and_target} --out {out}", "not both"),
    ("bench.grid", "--config {official_cfg} --out {out}", "decides once per batch"),
    ("bench.grid", "--config {variant} --out {out}", "valid choices: full, full-ft"),
    ("bench.grid", "--config {order_ddim} --out {out}", "'ddim' has no order option"),
    ("bench.grid", "--config {order_high} --out {out}", "no order 4; valid choices: 1, 2, 3"),
    ("bench.grid", "--config {order_steps} --out {out}", "order 3 needs at least 3 steps"),
    ("bench.grid", "--config {spacing} --out {out}", "valid choices: trailing, leading"),
    ("bench.grid", "--config {end} --out {out}", "already ends at timestep 0"),
    ("bench.grid", "--quick --config {steps_str} --out {out}", "--quick and --config"),
    ("bench.grid", "--quick --workers 0 --out {out}", "--workers must be >= 1"),
    ("bench.grid", "--quick --samples many --out {out}", "invalid int value: 'many'"),
    ("bench.grid", "--quick --out {file}/out", "cannot write to"),
    ("bench.grid", "--quick --out {file}", "cannot write to"),  # a file where a folder goes
    ("bench.grid", "--config {out}/missing.toml --out {out}", "cannot read config"),
    ("bench.train", "--lr inf --cache-dir {cache}", "lr must be a finite number >= 0"),
    ("bench.train", "--recipe uem --lambda-u -1 --cache-dir {cache}", "lambda_u must be"),
    ("bench.train", "--model huge --cache-dir {cache}", "invalid choice: 'huge'"),
    ("bench.train", "--lambda-u 2 --cache-dir {cache}", "no effect with recipe 'full'"),
    ("bench.train", "--text bogus --cache-dir {cache}", "unknown text encoder 'bogus'"),
    ("bench.train", "--save-every -1 --cache-dir {cache}", "save_every must be >= 0"),
    (
        "bench.train",
        "--seed 99999999999 --cache-dir {cache}",
        "seed must be an integer in [0, 2**32)",
    ),
    ("bench.prune", "--seed -1 --model micro --cache-dir {cache}", "seed must be an integer in"),
    (
        "bench.train",
        "--model tiny13-p4 --dataset digits --cache-dir {cache}",
        "not at least 4 whole patches per side; valid models for this data set: tiny",
    ),
    ("bench.grid", "--config {p4_on_digits} --out {out}", "cuts 8x8 images into 4x4 patches"),
    ("bench.report", "--grid {out}", "no records"),
    ("bench.report", "--grid {grid} --cells nomatch --out {out}", "no cell label contains"),
    (
        "bench.studies.ablation",
        "--config {steps_str} --out {out}",
        "field 'steps' must be an integer",
    ),
    (
        "bench.studies.ablation",
        "--config {steps_str} --out {out}",
        "python -m bench.studies.ablation: error",
    ),
    (
        "bench.studies.curve",
        "--samples 1 --out {out} --cache-dir {cache}",
        "--samples must be >= 2",
    ),
    ("bench.studies.throughput", "--model micro --official {evil} --out {out}", "was refused"),
    ("bench.studies.throughput", "--model micro --targets 1.5 --out {out}", "--targets must be"),
    ("bench.prune", "--ratio 1.5 --model micro --cache-dir {cache}", "ratio must be in [0, 1)"),
    # Resources a sweep needs, checked before any cell trains (not failed cells minutes later).
    ("bench.grid", "--config {cifar} --out {out}", "CIFAR-10 not found (no --data-root given)"),
    ("bench.grid", "--config {inception} --out {out}", "InceptionV3 weights not found"),
    ("bench.grid", "--config {huge} --out {out}", "expands to 12,000 cells, more than"),
    ("bench.grid", "--quick --max-cells 0 --out {out}", "--max-cells: must be >= 1, got 0"),
    (
        "bench.grid",
        "--quick --executor dask --scheduler tcp://127.0.0.1:9 --out {out}",
        "cannot reach the Dask scheduler at tcp://127.0.0.1:9",
    ),
    ("bench.grid", "--quick --scheduler tcp://127.0.0.1:9 --out {out}", "needs --executor dask"),
    # Every command checks the folders it writes before any work.
    ("bench.train", "--model micro --cache-dir {file}/cache", "cannot write to"),
    ("bench.prune", "--model micro --cache-dir {file}/cache", "cannot write to"),
    ("bench.report", "--grid {file}/grid", "cannot write to"),
    ("bench.text", "--cache-dir {file}/cache", "cannot write to"),
    ("bench.studies.curve", "--model micro --out {file}/o --cache-dir {cache}", "cannot write to"),
    ("bench.studies.throughput", "--model micro --out {file}/o", "cannot write to"),
    ("bench.studies.samples", "--out {file}/o --cache-dir {cache}", "cannot write to"),
    ("bench.studies.ablation", "--out {file}/o --cache-dir {cache}", "cannot write to"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize(("module", "args", "message"), CASES, ids=lambda v: str(v)[:40])
def test_bad_input_is_one_line_exit_2_nothing_written(inputs, tmp_path, module, args, message):
    out, cache = tmp_path / "out", tmp_path / "cache"
    _refused_in_one_line(
        module, args.format(out=out, cache=cache, **inputs).split(), tmp_path, message
    )
    assert not out.exists() and not cache.exists()  # nothing written


def _refused_in_one_line(module: str, argv: list[str], tmp_path: Path, message: str) -> None:
    """``python -m module argv`` (run in ``tmp_path``) exits 2 with one ``error:`` line holding
    ``message``, no traceback, and no refused pickle ran."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["DIFFCOMPRESS_INCEPTION_WEIGHTS"] = str(tmp_path / "absent" / "inception-2015-12-05.pt")
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=tmp_path,  # a refused pickle that ran would leave PWNED here
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "PWNED").exists()


def test_taylor_3m_below_order_3_is_refused(tmp_path, capsys):
    """taylor_3m changes only the third-order update: at order 2 it would be a new record key
    for an identical run, so the sweep is refused when read."""
    from bench.grid import main

    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[[cell]]\nmodel = "micro"\nsampler = "dpm-solver++"\norder = 2\ntaylor_3m = true\n'
    )
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--dry-run", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "taylor_3m applies to 'dpm-solver++' at order 3, not order 2" in capsys.readouterr().err


def _clip_folder_with_a_pickle(folder: Path) -> None:
    """A tiny CLIP text-encoder folder whose weights are a code-running pickle (no safetensors)."""
    transformers = pytest.importorskip("transformers")
    folder.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt")
    ).save_pretrained(folder)
    transformers.CLIPTextConfig(
        vocab_size=4,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
    ).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))


def test_a_text_encoder_folder_with_a_pickle_is_refused_in_one_line(tmp_path):
    _clip_folder_with_a_pickle(tmp_path / "clip")
    argv = ["--encoder", f"clip:{tmp_path / 'clip'}", "--prompts", "a"]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    _refused_in_one_line("bench.text", argv, tmp_path, "refused to load the text encoder")
