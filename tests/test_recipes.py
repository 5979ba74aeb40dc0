from __future__ import annotations

import pytest
import torch

from adaptive.recipes import RECIPES, UEMLoss, get_recipe, uem_loss
from bench.cache import config_hash
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
    if recipe.prepare is not None:  # parts the model does not build itself (DyDiT's routers)
        recipe.prepare(model)
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


@torch.no_grad()
def _uem_parts(model, x_t, t, eps):
    """Per-layer MSE and batch-mean certainty, computed independently of the recipe."""
    state = model.embed(x_t, t)
    mse, cert = [], []
    for i in range(model.depth):
        model.run_block(i, state)
        mse.append(((model.readout(state) - eps) ** 2).mean())
        cert.append((1 - model.uncertainty(i, state)).mean())
    return torch.stack(mse), torch.stack(cert)


def test_official_ual_is_the_certainty_weighted_mean_of_layer_errors():
    """AdaDiff sde.py mos_layer_wise: w_i = mean certainty of layer i, normalised over layers."""
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="uem")
    x_t, t, eps = _batch()
    _, logs = get_recipe("uem").loss(model, x_t, t, None, eps, 0)
    mse, cert = _uem_parts(model, x_t, t, eps)
    w = cert / cert.sum()
    assert logs["ual"] == pytest.approx(float((w * mse).sum()), rel=1e-5)
    assert mse.min() <= logs["ual"] <= mse.max()  # a convex combination: L_simple's scale
    _, summed = get_recipe("uem-summed").loss(model, x_t, t, None, eps, 0)
    assert summed["ual"] > 2 * logs["ual"]  # the unnormalised sum is about depth-fold


@pytest.mark.parametrize(("name", "trains_uem"), [("uem", True), ("uem-summed", False)])
def test_ual_reaches_the_uem_through_its_weights_only_in_the_official_form(name, trains_uem):
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="uem")
    x_t, t, eps = _batch()
    loss, _ = get_recipe(name).loss(model, x_t, t, None, eps, 0, lambda_u=0.0)
    loss.backward()
    g = sum(float(p.grad.abs().sum()) for p in model.uem.parameters() if p.grad is not None)
    assert (g > 0) == trains_uem


def test_lambda_ual_zero_is_l_simple_plus_l_u():
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, exit_heads="uem")
    x_t, t, eps = _batch()
    loss, logs = uem_loss(model, x_t, t, None, eps, lambda_ual=0.0)
    assert loss.item() == pytest.approx(logs["simple"] + logs["u"], rel=1e-6)
    with pytest.raises(ValueError, match="valid: official, summed"):
        UEMLoss("sum")


def test_recipe_revision_changes_only_its_own_keys():
    """`uem` changed meaning (revision 1): its checkpoints get new keys; others keep theirs."""
    for name in ("full", "layerwise", "pabee", "berxit", "uem-summed"):
        cfg = TrainConfig(recipe=name).normalised()
        assert cfg.key == config_hash(cfg, kind="checkpoint"), name
    uem = TrainConfig(recipe="uem")
    assert uem.key != config_hash(uem, kind="checkpoint")
    assert uem.key != TrainConfig(recipe="uem-summed").key


def test_full_ft_is_the_equally_trained_control():
    cfg = TrainConfig(recipe="full-ft", finetune_steps=4000, lambda_u=0.5)
    assert cfg.base == TrainConfig(recipe="uem", finetune_steps=4000).base  # same start
    assert cfg.normalised().lambda_u == 1.0  # loss weights it does not take are reset
    assert get_recipe("full-ft").loss is get_recipe("full").loss


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lambda_u": -1.0}, "lambda_u must be a finite number >= 0"),
        ({"lambda_ual": float("nan")}, "lambda_ual must be a finite number >= 0"),
        ({"recipe": "uem-sumed"}, "valid choices: full, full-ft"),
    ],
)
def test_bad_training_values_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)
