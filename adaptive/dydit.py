"""DyDiT (Zhao et al., "Dynamic Diffusion Transformer", ICLR 2025, arXiv 2410.03456): routers,
the masked training forward and the FLOP-constrained loss.

Two mechanisms, each selectable alone (:data:`MODES`):

- **Timestep-wise dynamic width** (TDW, Sec. 3.2): per block, a head router and an MLP
  channel-group router (``Linear(D, H - 1)`` each) read the time embedding and switch attention
  heads and MLP channel groups (H groups of ``4D / H`` hidden channels) on or off; head 0 and
  group 0 are always on (as in the official training code). The masks depend on t alone, so a
  sampling step runs one width for the whole batch.
- **Spatial-wise dynamic tokens** (SDT, Sec. 3.3): per block, a token router (``Linear(D, D//16)
  -> ReLU -> Linear(D//16, 1)``) on the residual stream after the attention branch lets a token
  skip the block's MLP (it passes through unchanged).

Training (:func:`dydit_loss`): masks are Gumbel-sigmoid samples (tau 5) hardened at 0.5 with a
straight-through gradient; the loss is the masked model's L_simple plus the complete (unmasked)
model's L_simple plus ``2 (mean_b r_b - lambda)^2``, where ``r_b`` is the FLOP ratio the hard masks
give sample b (the official ``loss.py``; the target warms up from 1 to lambda). Departures,
for CPU-sized fine-tunes: routers start at logit +3 instead of +15 / +35 and their logits are
scaled by :data:`LOGIT_SCALE` (under Adam a 10x learning rate for the routers: the official
runs train 30k-150k steps, ours 1,000); ``r_b`` is the whole model's executed FLOP ratio as the
suite counts it (embedding, skip fusions, readout and routers included), so the target is the
ratio a cell reports. Inference (:mod:`adaptive.dydit_policy`) thresholds ``sigmoid(logit)``
and slices the weights, so saved FLOPs are real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaptive.dydit_blocks import BlockView, view_of

__all__ = [
    "LOGIT_SCALE",
    "MODES",
    "DyDiTRouters",
    "attach_routers",
    "dydit_loss",
    "dynamic_forward",
    "gumbel_mask",
    "hard_mask",
]

MODES = ("both", "width", "token")
TAU = 5.0  # Gumbel-sigmoid temperature (official default)
LOGIT_SCALE = 10.0
INIT_LOGIT = 3.0  # sigmoid(3) = 0.95: every head, group and token starts on
FLOP_WEIGHT = 2.0  # the official weight of the FLOP loss
TARGET_HOLD = 100  # steps at target 1 before the warm-up (official)


class _TokenRouter(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, max(1, dim // 16)), nn.Linear(max(1, dim // 16), 1)
        nn.init.zeros_(self.fc2.weight)  # every token starts on, at logit INIT_LOGIT
        nn.init.constant_(self.fc2.bias, INIT_LOGIT / LOGIT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> logits (B, N)"""
        return LOGIT_SCALE * self.fc2(F.relu(self.fc1(x))).squeeze(-1)


class DyDiTRouters(nn.Module):
    """The routers of a ``depth``-block model of width ``dim`` with ``heads`` heads."""

    def __init__(self, dim: int, heads: int, depth: int, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown DyDiT mode {mode!r}; valid choices: {', '.join(MODES)}")
        if heads < 2 and mode != "token":
            raise ValueError(f"dynamic width needs >= 2 heads, got {heads}")
        self.mode, self.heads = mode, heads
        self.width = mode in ("both", "width")
        self.token = mode in ("both", "token")
        n = heads - 1 if self.width else 0
        self.head = nn.ModuleList(nn.Linear(dim, n) for _ in range(depth if self.width else 0))
        self.group = nn.ModuleList(nn.Linear(dim, n) for _ in range(depth if self.width else 0))
        self.tokens = nn.ModuleList(_TokenRouter(dim) for _ in range(depth if self.token else 0))
        for lin in [*self.head, *self.group]:
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, INIT_LOGIT / LOGIT_SCALE)

    def width_logits(self, i: int, temb: Tensor) -> tuple[Tensor, Tensor]:
        """Block ``i``'s (head, group) logits (B, H - 1) from the time embedding (B, D)."""
        return LOGIT_SCALE * self.head[i](temb), LOGIT_SCALE * self.group[i](temb)


def attach_routers(model: nn.Module, mode: str = "both") -> nn.Module:
    """Give a U-ViT or a DiT (:func:`adaptive.dydit_blocks.view_of`) DyDiT routers
    (``model.routers``); returns the model."""
    view = view_of(model)
    model.routers = DyDiTRouters(view.dim, view.heads, view.depth, mode)
    return model


def gumbel_mask(logits: Tensor, hard_at: float = 0.5) -> Tensor:
    """A 0/1 mask sampled with Gumbel noise, straight-through: forward hard, gradient of
    ``sigmoid((logits + g1 - g2) / TAU)`` (Jang et al. 2017; DyDiT's ``_gumbel_sigmoid``)."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    noise = torch.log(u) - torch.log1p(-u)  # g1 - g2 of two Gumbels is logistic
    soft = torch.sigmoid((logits + noise) / TAU)
    return (soft > hard_at).to(soft.dtype) - soft.detach() + soft


def with_head0(mask: Tensor) -> Tensor:
    """(B, H - 1) router mask -> (B, H) with head / group 0 always on."""
    return torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)


def hard_mask(logits: Tensor) -> Tensor:
    """The inference mask at DyDiT's threshold: ``sigmoid(logits) > 0.5`` as 0/1 floats."""
    return (logits > 0).to(logits.dtype)


def _masked_block(view: BlockView, i: int, state, masks: dict[str, Tensor], mask_fn) -> None:
    """Block ``i`` with multiplied masks (training): ``masks`` holds per-row ``heads`` (B, H)
    and ``groups`` (B, H) when the width is dynamic, and a ``tokens`` entry, replaced by the
    (B, N) token mask ``mask_fn`` makes of the token router's logits, when tokens are."""
    block, x, mod = view.enter(i, state)
    w_qkv, b_qkv, w_proj, b_proj = view.attn_weights(block)
    B, N, D = x.shape
    qkv = F.linear(view.attn_input(block, x, mod), w_qkv, b_qkv)
    q, k, v = qkv.reshape(B, N, 3, view.heads, D // view.heads).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
    if "heads" in masks:
        o = o * masks["heads"][:, :, None, None]
    x = view.add(x, F.linear(o.transpose(1, 2).reshape(B, N, D), w_proj, b_proj), mod, 0)
    w1, b1, w2, b2 = view.mlp_weights(block)
    hid = F.linear(view.mlp_input(block, x, mod), w1, b1)  # (B, N, hidden)
    if "groups" in masks:
        hid = hid * masks["groups"].repeat_interleave(hid.shape[-1] // view.heads, dim=1)[:, None]
    m = F.linear(view.act(block, hid), w2, b2)
    if "tokens" in masks:
        masks["tokens"] = mask_fn(view.model.routers.tokens[i](x))  # on the residual stream
        m = m * masks["tokens"][..., None]
    view.leave(i, state, view.add(x, m, mod, 1))


def ends_cost(model, x_t: Tensor, t: Tensor, cond) -> float:
    """Per-row FLOPs of the embedding and the readout (measured once, on one row)."""
    from blockloop.flops import count_flops

    one = None if cond is None else cond[:1]
    with torch.no_grad():
        f_embed, state = count_flops(model.embed, x_t[:1], t[:1], one)
        return f_embed + count_flops(model.readout, state)[0]


def dynamic_forward(model, x_t: Tensor, t: Tensor, cond, mask_fn=gumbel_mask):
    """(eps, per-row FLOP ratio r (B,)) of the masked model; r counts the whole model:
    embedding, blocks, routers and readout. ``mask_fn``: logits -> 0/1 mask (training: Gumbel
    samples, straight-through; :func:`hard_mask`: the inference decision)."""
    r, view = model.routers, view_of(model)
    if getattr(r, "ends", None) is None:
        r.ends = ends_cost(model, x_t, t, cond)
    state = model.embed(x_t, t, cond)
    if getattr(r, "costs", None) is None:
        r.costs = view.costs()
    costs = r.costs
    flops = torch.full((x_t.shape[0],), float(r.ends), device=x_t.device)
    static = float(r.ends)
    for i, c in enumerate(costs):
        masks: dict[str, Tensor] = {}
        if r.width:
            hl, gl = r.width_logits(i, view.router_input(state))
            masks["heads"], masks["groups"] = with_head0(mask_fn(hl)), with_head0(mask_fn(gl))
        if r.token:
            masks["tokens"] = torch.empty(0)  # sampled inside, on the post-attention stream
        _masked_block(view, i, state, masks, mask_fn)
        heads = masks["heads"].sum(1) if r.width else c.heads
        groups = masks["groups"].sum(1) if r.width else c.heads
        tokens = masks["tokens"].sum(1) if r.token else c.tokens
        flops = flops + c.fixed(r.width, r.token) + c.attn(heads) + c.mlp(groups, tokens)
        static += c.fixed(False, False) + c.attn(c.heads) + c.mlp(c.heads, c.tokens)
    return model.readout(state), flops / static


def target_at(step: int, steps: int, target: float) -> float:
    """The FLOP target at fine-tune ``step``: 1 for the first steps, then linear to ``target``
    over the first half of the fine-tune (the official warm-up, scaled to our budget)."""
    warm = max(1, steps // 2 - TARGET_HOLD)
    if step < TARGET_HOLD:
        return 1.0
    return 1.0 - (1.0 - target) * min(1.0, (step - TARGET_HOLD) / warm)


def dydit_loss(
    model, x_t, t, cond, eps, step: int = 0, flop_target: float = 1.0, finetune_steps: int = 1000
):
    """DyDiT's stage-1 loss (module docstring): masked + complete L_simple + FLOP loss; the
    recipe passes the training config's ``flop_target`` and ``finetune_steps``."""
    pred, ratio = dynamic_forward(model, x_t, t, cond)
    dyn = F.mse_loss(pred, eps)
    complete = F.mse_loss(model(x_t, t, cond), eps)
    goal = target_at(step, finetune_steps, flop_target)
    l_flops = FLOP_WEIGHT * (ratio.mean() - goal) ** 2
    loss = dyn + complete + l_flops
    return loss, {"loss": loss.item(), "dyn": dyn.item(), "ratio": ratio.mean().item()}
