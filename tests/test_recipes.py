from __future__ import annotations

import pytest
import torch

from adaptive.recipes import RECIPES, get_recipe
from bench.train import TrainConfig, load_or_train
from models import make_model


def _batch(b=4):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(b, 1, 8, 8, generator=g),
        torch.rand(b, generator=g) * 999,
        torch.randn(b, 1, 8, 8, generator=g),
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_gives_a_finite_loss_and_gradients(name):
    recipe = get_recipe(name)
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads=recipe.heads)
    x_t, t, eps = _batch()
    for step in (0, 1):
        model.zero_grad()
        loss, logs = recipe.loss(model, x_t, t, None, eps, step)
        loss.backward()
        assert torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_uem_loss_trains_uem_without_leaking_into_backbone():
    """L_u is computed on the detached hidden state: it trains the UEMs only."""
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="uem")
    x_t, t, eps = _batch()
    loss, _ = get_recipe("uem").loss(model, x_t, t, None, eps, 0, lambda_u=1.0, lambda_ual=0.0)
    # Only L_simple + L_u: the backbone gradient must equal L_simple's alone.
    loss.backward()
    g_both = [p.grad.clone() for p in model.blocks[0].parameters()]
    model.zero_grad()
    simple = torch.nn.functional.mse_loss(model(x_t, t), eps)
    simple.backward()
    for a, b in zip(g_both, (p.grad for p in model.blocks[0].parameters()), strict=True):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.uem.parameters())


def test_berxit_odd_steps_train_only_the_lte():
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="lte")
    x_t, t, eps = _batch()
    loss, _ = get_recipe("berxit").loss(model, x_t, t, None, eps, 1)
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {"lte.weight", "lte.bias"}


def test_exit_recipe_finetunes_cached_full_checkpoint(cache):
    kw = dict(model="micro", steps=4, batch_size=8, warmup=2, finetune_steps=3)
    uem = load_or_train(TrainConfig(recipe="uem", **kw), cache, progress=False)
    base_cfg = TrainConfig(recipe="uem", **kw).base
    assert base_cfg.recipe == "full" and uem.meta["base"] == base_cfg.key
    base = load_or_train(base_cfg, cache, progress=False)
    assert base.cached  # trained once, as the uem build's first step
    assert uem.model.uem is not None and uem.meta["steps"] == 3
    # The `full` key ignores fine-tune-only fields.
    assert TrainConfig(**{**kw, "finetune_steps": 9}).normalised().key == base_cfg.key
