"""A new pruning criterion: rank heads and MLP channels by the first-order Taylor score of the
loss at low noise only (the timesteps where the image's details are formed).

``pruning.Importance`` is the contract: :meth:`scorer` returns the torch-pruning importance
that ranks each group of channels, and a gradient-based criterion fills ``.grad`` first in
:meth:`prepare` (``needs_gradients``). ``bench.plugins.register("importance", cls, name)``
makes its name valid for ``pruning.prune``, ``python -m bench.prune`` and the cell field
``prune_importance`` (in this process; ``--plugin MODULE`` on the command line).

Runs in seconds on an untrained ``micro`` model: ``python docs/examples/pruning_importance.py``.
"""

import torch
import torch.nn.functional as F
import torch_pruning as tp

import samplers
from bench.cell import Cell
from bench.plugins import register
from models import make_model
from pruning import Importance, prune


class LowNoiseTaylor(Importance):
    """|w * dL/dw| with the gradient of the eps loss at the lowest tenth of the timesteps."""

    name = "taylor-lownoise"
    needs_gradients = True  # prune() then requires data and the noise schedule

    def scorer(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance()  # reads the .grad prepare() leaves

    def prepare(self, model, data, alphas_cumprod, batches, gen) -> None:
        """Called once before scoring, with the model in train mode: sum the eps loss's
        gradients over ``batches`` batches of ``data``, each at timesteps in [0, T / 10)."""
        model.zero_grad()
        for _ in range(batches):
            x0 = data[torch.randint(len(data), (min(64, len(data)),), generator=gen)]
            t = torch.randint(0, len(alphas_cumprod) // 10, (x0.shape[0],), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            cond = model.example_cond(x0.shape[0])  # the null condition (None: unconditional)
            F.mse_loss(model(x_t, t.float(), cond), eps).backward()


register("importance", LowNoiseTaylor)


def main() -> None:
    torch.manual_seed(0)
    model = make_model("micro", 8, 1, num_heads=4)  # untrained: a smoke run
    schedule = samplers.make_schedule("cosine", 1000)
    data = torch.rand(32, 1, 8, 8) * 2 - 1  # stands in for real images in [-1, 1]
    before = sum(p.numel() for p in model.parameters())
    result = prune(model, 0.5, "taylor-lownoise", data=data, alphas_cumprod=schedule.alphas_cumprod)
    after = sum(p.numel() for p in result.model.parameters())
    print(f"parameters {before} -> {after}; heads per block {result.num_heads}")
    # The pruned model is still a denoiser of the same signature.
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500.0)
    with torch.inference_mode():
        print("eps shape:", tuple(result.model(x, t).shape))
    cell = Cell(model="micro", prune_ratio=0.3, prune_importance="taylor-lownoise")
    print("cell:", cell.label())


if __name__ == "__main__":
    main()
