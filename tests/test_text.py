"""Text-guided generation: prompts, context tokens in U-ViT, training, guidance against the
empty prompt, exits, pruning and caching on a text model, the agreement metric, bad input.

Most tests use a small deterministic stand-in for the sentence encoder (no download, no
optional extra); ``test_the_packaged_minilm_encodes_offline`` runs the real one when the
``[text]`` extra is installed (CI installs it)."""

from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch

from bench import text
from bench.cache import ArtifactCache
from bench.cell import Cell
from bench.text import CONTEXT_LEN, PROMPT_SETS, TextError

DIM = 8


class FakeEncoder:
    """Each word maps to a fixed random vector (seeded by its CRC), padding to zeros: prompts
    of one class share words, so a model can learn the class from them."""

    name = "fake-minilm"
    dim = DIM
    max_tokens = 20

    def encode(self, prompts, length):
        out = torch.zeros(len(prompts), length, DIM)
        for i, p in enumerate(prompts):
            words = ["[cls]", *p.replace(",", " ").split(), "[sep]"]
            if len(words) > length:
                raise TextError(f"prompt {p!r} has {len(words)} tokens; the context holds {length}")
            for j, w in enumerate(words):
                g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                out[i, j] = torch.randn(DIM, generator=g)
        return out


@pytest.fixture
def fake_encoder(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "load_encoder", lambda name, cache=None: FakeEncoder())
    monkeypatch.setattr(text, "_minilm_folder", lambda cache: (tmp_path, FakeEncoder.name))
    monkeypatch.setitem(text._DIMS, "minilm", DIM)
    return FakeEncoder()


def test_prompt_sets_hold_out_whole_templates():
    ps = PROMPT_SETS["digits"]
    assert not set(ps.train) & set(ps.heldout)
    train, held = ps.prompts("train"), ps.prompts("heldout")
    assert len(train) == len(held) == 10 and len(train[7]) == len(ps.train)
    assert train[7][0] == "a handwritten seven" and "7" in held[7][0]
    assert not {p for row in train for p in row} & {p for row in held for p in row}
    with pytest.raises(TextError, match="valid choices: train, heldout"):
        ps.prompts("test")


def test_contexts_are_encoded_once_and_cycle_classes_then_templates(fake_encoder, tmp_path):
    cache = ArtifactCache(tmp_path / "c", shipped=())
    ctx = text.load_context("minilm", "digits", cache)
    ps = PROMPT_SETS["digits"]
    assert ctx.train.shape == (10, len(ps.train), CONTEXT_LEN, DIM)
    assert ctx.heldout.shape == (10, len(ps.heldout), CONTEXT_LEN, DIM)
    assert torch.equal(ctx.null, fake_encoder.encode([""], CONTEXT_LEN)[0])
    cond, classes = ctx.conditions(23, "heldout")
    assert classes.tolist() == [i % 10 for i in range(23)]
    assert torch.equal(cond[12], ctx.heldout[2, 1])  # sample 12: class 2, template 1
    again = text.load_context("minilm", "digits", cache)  # from the cache
    assert torch.equal(again.train, ctx.train)
    assert len(list((cache.root / "text").glob("*.safetensors"))) == 1


def _text_model(**kw):
    from models import make_model

    return make_model("micro", 8, 1, context_dim=DIM, context_len=CONTEXT_LEN, **kw)


def test_context_tokens_enter_the_model_and_the_flop_count():
    from adaptive.policies import make_policy
    from blockloop.executor import EarlyExitDenoiser
    from blockloop.flops import count_flops
    from models import make_model

    model = _text_model().eval()
    assert model.cfg.extras == 1 + CONTEXT_LEN
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 500.0)
    cond = torch.randn(3, CONTEXT_LEN, DIM)
    with torch.no_grad():
        eps = model(x, t, cond)
        assert eps.shape == x.shape
        assert not torch.allclose(eps, model(x, t, torch.randn_like(cond)))  # it reads them
    with pytest.raises(ValueError, match="text-conditional"):
        model(x, t, None)
    with pytest.raises(ValueError, match="text-conditional"):
        model(x, t, torch.zeros(3, 4, DIM))
    # The executor's count equals FlopCounterMode on the real forward, context included, and
    # exceeds the unconditional model's (the context tokens cost).
    ex = EarlyExitDenoiser(model, make_policy("full"), 1000)
    with torch.inference_mode():
        counted, _ = count_flops(model, x, t, cond)
        ex(x, t, cond)
    assert ex.executed_flops == counted
    plain = make_model("micro", 8, 1).eval()
    with torch.inference_mode():
        assert counted > count_flops(plain, x, t)[0]


def test_guidance_runs_against_the_empty_prompt():
    from samplers import ClassifierFreeGuidance

    model = _text_model().eval()
    with torch.no_grad():
        model.null_context.normal_()
    seen = []

    def den(x, t, c):
        seen.append(c)
        return torch.zeros_like(x)

    cfg = ClassifierFreeGuidance(den, 2.0, model.null_cond())
    cond = torch.randn(4, CONTEXT_LEN, DIM)
    cfg(torch.zeros(4, 1, 8, 8), torch.zeros(4), cond)
    (c,) = seen
    assert torch.equal(c[:4], cond) and torch.equal(c[4:], model.null_context.expand(4, -1, -1))


def test_a_text_model_trains_exits_and_scores_agreement(fake_encoder, shared_cache_dir):
    from bench.run import run_cell

    cell = Cell(
        model="micro",
        text="minilm",
        recipe="uem",
        policy="uem",
        target_flop_ratio=0.7,
        guidance=1.5,
        sampler="ddim",
        steps=4,
        samples=40,
    )
    phases: list[str] = []
    rec = run_cell(cell, ArtifactCache(shared_cache_dir), phase=phases.append)
    assert phases == ["train", "calibrate", "sample", "time", "score"]
    assert 0.0 <= rec["agreement"] <= 1.0 and rec["fid"] is not None
    assert abs(rec["flop_ratio_per_call"] - 0.7) < 0.15
    assert "text:minilm/heldout" in rec["label"]
    # The text model's checkpoint carries the empty prompt's states for guidance.
    from bench.cell import cell_train_config
    from bench.train import load_or_train

    tm = load_or_train(cell_train_config(cell), ArtifactCache(shared_cache_dir))
    assert torch.equal(tm.model.null_context, fake_encoder.encode([""], CONTEXT_LEN)[0])


def test_pruning_and_caching_work_on_a_text_model(fake_encoder, shared_cache_dir):
    from bench.run import run_cell

    common = dict(model="micro", text="minilm", guidance=1.0, sampler="ddim", steps=4, samples=20)
    pruned = run_cell(Cell(**common, prune_ratio=0.3), ArtifactCache(shared_cache_dir))
    assert pruned["params"] < pruned["params_unpruned"] and pruned["agreement"] is not None
    cached = run_cell(Cell(**common, cache="fora", cache_knob=2), ArtifactCache(shared_cache_dir))
    assert cached["flop_ratio_per_call"] < 0.8


def test_unconditioned_cells_and_checkpoints_keep_their_keys():
    from bench.cell import cell_train_config
    from bench.train import TrainConfig

    # Adding the text fields changes no existing key (shipped checkpoints and records).
    assert TrainConfig().key == TrainConfig(text=None).key
    assert cell_train_config(Cell(text="minilm")).key != cell_train_config(Cell()).key
    assert Cell(prompts="heldout").key == Cell().key


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"text": "bert"}, "valid choices: minilm, clip:NAME"),
        ({"text": "minilm", "prompts": "test"}, "valid choices: train, heldout"),
        ({"prompts": "train"}, "prompts applies to text-conditioned cells"),
    ],
)
def test_bad_text_cells(fields, match):
    with pytest.raises(ValueError, match=match):
        Cell(**fields)


def test_missing_extra_and_long_prompts_are_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TextError, match=r"pip install -e '\.\[text\]'"):
        text._minilm_folder(ArtifactCache(tmp_path))
    monkeypatch.undo()
    with pytest.raises(TextError, match="the context holds"):
        FakeEncoder().encode(["a b c d e f g h i j k l m"], CONTEXT_LEN)
    # The command line: an empty prompt list and prompts without text are refused, exit 2.
    for args in (["--prompts"], ["--prompts", "", " "]):
        with pytest.raises(SystemExit) as e:
            text.main([*args, "--cache-dir", str(tmp_path)])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected at least one argument" in err and "only empty prompts" in err


@pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="the [text] extra is not installed",
)
def test_the_packaged_minilm_encodes_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = text.load_encoder("minilm", ArtifactCache(tmp_path))
    assert enc.dim == 384 and enc.name.startswith("minilm-0.1.2-")
    states = enc.encode(["a handwritten seven", "the digit 7", "a handwritten one"], CONTEXT_LEN)
    assert states.shape == (3, CONTEXT_LEN, 384)
    # Deterministic: the same call twice is bitwise equal (frozen, eval mode). A prompt's state
    # does not depend on the batch it came in (the encoder runs one prompt per forward; a batched
    # forward differs in the last bits with transformers 5.x, so only a tolerance is promised
    # across shapes), and different prompts give different states.
    again = enc.encode(["a handwritten seven", "the digit 7", "a handwritten one"], CONTEXT_LEN)
    assert torch.equal(states, again)
    alone = enc.encode(["a handwritten seven"], CONTEXT_LEN)
    torch.testing.assert_close(states[:1], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(states[0], states[2])
    longest = max(
        (p for split in ("train", "heldout") for row in PROMPT_SETS["digits"].prompts(split)
         for p in row),
        key=lambda p: len(enc.tokenizer(p)["input_ids"]),
    )  # fmt: skip
    assert len(enc.tokenizer(longest)["input_ids"]) <= CONTEXT_LEN
    with pytest.raises(TextError, match="the context holds"):
        enc.encode([" ".join(["seven"] * 40)], CONTEXT_LEN)
    # A cached context is the tensor of each prompt encoded alone, whatever it was batched with.
    ctx = text.load_context("minilm", "digits", ArtifactCache(tmp_path))
    assert torch.equal(ctx.train[7, 0], alone[0])


def test_a_sweep_without_the_text_extra_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from bench import grid

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m: None if m == "all_minilm_l6_v2" else real(m)
    )
    cfg = tmp_path / "t.toml"
    cfg.write_text('[[cell]]\nmodel = "micro"\ntext = "minilm"\nsteps = 2\nsamples = 4\n')
    with pytest.raises(SystemExit) as e:
        grid.main(["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "pip install -e '.[text]'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records").exists()
