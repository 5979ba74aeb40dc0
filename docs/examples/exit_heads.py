"""DeeDiff's exit heads on a model that was not built with them.

Exit heads are modules a model carries (``models/heads.py``), not parts of one backbone class:
``attach_exit_heads(model, "uem")`` gives any layer-wise model (``blockloop/model.py``) that
provides ``exit_inputs(state) -> (patch tokens, time embedding)`` one UEM per block, sized from
one row through the model. The ``uem`` recipe's loss (DeeDiff's UAL, ``adaptive.recipes``)
then trains them beside the backbone, and the ``uem`` exit policy reads them in the block loop,
their FLOPs counted. Here the model is a small random diffusers DiT behind
``models.dit.DiTAdapter``; the registered ``dit-tiny`` size does the same in a sweep cell.

Runs in seconds: ``python docs/examples/exit_heads.py`` (a few training steps on noise).
"""

import torch

import samplers
from adaptive.policies import make_policy
from adaptive.recipes import uem_loss
from bench.cell import Cell
from blockloop.executor import EarlyExitDenoiser
from models.dit import tiny_dit
from models.heads import attach_exit_heads, exit_heads_of

T = 1000


def main() -> None:
    torch.manual_seed(0)
    model = attach_exit_heads(tiny_dit(), "uem")  # a DiT built without heads, given UEMs
    print(f"heads: {exit_heads_of(model)}, {len(model.uem)} UEMs")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    alphas = samplers.make_schedule("linear", T).alphas_cumprod.float()
    x0, labels = torch.randn(16, 1, 8, 8), torch.arange(16) % 10  # stand-ins for data
    for _ in range(5):  # DeeDiff's loss: L_simple + L_u + L_UAL (Eq. 6-9)
        t = torch.randint(0, T, (16,))
        eps = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss, logs = uem_loss(model.train(), x_t, t, labels, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"uem loss after 5 steps: {logs['loss']:.3f} (u: {logs['u']:.3f})")
    ex = EarlyExitDenoiser(model.eval(), make_policy("uem", 0.6), T)
    with torch.inference_mode():
        ex(torch.randn(8, 1, 8, 8), torch.full((8,), 500.0), labels[:8])
    print(f"uem exits at tau 0.6: FLOP ratio {ex.flop_ratio:.2f} (heads counted)")
    cell = Cell(model="dit-tiny", recipe="uem", policy="uem", target_flop_ratio=0.65)
    print("cell:", cell.label())


if __name__ == "__main__":
    main()
