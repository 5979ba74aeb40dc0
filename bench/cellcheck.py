"""The checks a :class:`~bench.cell.Cell` runs when it is made, one per component: field types,
the exit policy, the step-level cache, the training fields. Each component is validated by
building its object once from the cell's spec (:class:`adaptive.policies.ExitSpec`,
:class:`caching.CacheSpec`), so a bad sweep fails when it is read, never inside a run, and
with the message of the component that owns the rule."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from adaptive.calibrate import check_target
from adaptive.policies import POLICIES
from adaptive.recipes import LOSS_WEIGHTS, RECIPES, check_pairing
from bench.data import dataset_info
from bench.text import PROMPT_SETS, check_text
from caching import CACHES, check_composition
from models import MODELS
from models.pretrained import describe, is_folder
from samplers import VPSchedule

# A bench.cell.Cell: not imported, since bench.cell imports this module (no import circle).
Cell = Any

__all__ = [
    "CACHE_OPTION_FIELDS",
    "NoneOr",
    "check_cache",
    "check_conditioning",
    "check_policy",
    "check_pretrained",
    "check_training",
    "check_types",
    "model_size",
]

# Cell fields that are a cache policy's options, and the cache each applies to.
CACHE_OPTION_FIELDS = {"cache_branch": "deepcache", "cache_order": "taylorseer"}
EXITING = [name for name, cls in POLICIES.items() if cls.knob_name is not None]


class NoneOr(Mapping):
    """``registry`` with ``"none"`` first (a cell's "no cache"); a live view, so entries a
    plugin registers later are valid too."""

    def __init__(self, registry: dict[str, Any]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Any:
        return None if name == "none" else self._registry[name]

    def __iter__(self) -> Iterator[str]:
        yield "none"
        yield from self._registry

    def __len__(self) -> int:
        return 1 + len(self._registry)


def model_size(model: str) -> dict[str, Any]:
    """The size entry of a cell's ``model``: the registered size, or a ``from_pretrained``
    folder's (:meth:`models.pretrained.PretrainedFolder.size`, read from its config)."""
    if is_folder(model):
        return describe(model).size
    if model not in MODELS:
        raise ValueError(
            f"unknown model {model!r}; valid choices: {', '.join(MODELS)}, or a local diffusers "
            "from_pretrained folder (a path containing '/')"
        )
    return MODELS[model]


def check_pretrained(cell: Cell) -> VPSchedule:
    """A cell whose ``model`` is a ``from_pretrained`` folder runs the weights as they are:
    recipe ``full`` (so no policy that needs trained heads), no pruning, no text, no training
    fields; its images have the data set's shape (FID compares them); guidance asks for the
    data set's classes, which the model must take. Returns the folder's noise schedule."""
    spec = describe(cell.model)
    what = [f for f in ("finetune_steps", "prune_ratio", "text") if getattr(cell, f)]
    what += [f"recipe {cell.recipe!r}"] if cell.recipe != "full" else []
    if what:
        raise ValueError(
            f"model {cell.model!r} is pretrained weights, run as loaded: {', '.join(what)} would "
            "train it (use recipe 'full', no pruning, no text; exit policies that need no heads: "
            f"{', '.join(p for p, c in POLICIES.items() if c.heads == 'none')})"
        )
    info = dataset_info(cell.dataset)
    want = (info.channels, info.img_size, info.img_size)
    if spec.image_shape != want:
        raise ValueError(
            f"model {cell.model!r} makes {spec.image_shape} images, data set {cell.dataset!r} "
            f"holds {want}: FID needs the same shape"
        )
    if cell.guidance is not None and spec.num_classes != info.num_classes:
        raise ValueError(
            f"guidance asks for {cell.dataset!r}'s {info.num_classes} classes; model "
            f"{cell.model!r} takes {spec.num_classes}"
        )
    return VPSchedule(spec.betas(), name=f"pretrained:{spec.root}")


def check_types(cell: Cell) -> None:
    """Every field's type, from the dataclass's annotations: integers are integers (not bools
    or floats), floats are finite numbers, booleans are booleans, strings are strings; ``None``
    only where the annotation allows it. One ``ValueError`` naming the field."""
    for name, hint in typing.get_type_hints(type(cell)).items():
        value = getattr(cell, name)
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None:
            if type(None) in allowed:
                continue
            raise ValueError(f"field {name!r} must be set, got None")
        if bool in allowed:
            ok, what = isinstance(value, bool), "a boolean (true / false)"
        elif int in allowed:
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif float in allowed:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok, what = ok and math.isfinite(value), "a finite number"
        elif any(typing.get_origin(a) is dict for a in allowed):
            ok, what = _is_table(value), "a table of named numbers, strings or booleans"
        else:
            ok, what = isinstance(value, str), "a string"
        if not ok:
            raise ValueError(f"field {name!r} must be {what}, got {value!r}")


def _is_table(value: Any) -> bool:
    """An option table: a dict of identifier keys to finite numbers, strings or booleans."""
    scalar = (bool, int, float, str)
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and k.isidentifier()
        and isinstance(v, scalar)
        and not (isinstance(v, float) and not math.isfinite(v))
        for k, v in value.items()
    )


def _check_args(table: dict[str, Any] | None, field: str, own: dict[str, str]) -> None:
    """An option table may not set the knob, nor an option a field of its own sets."""
    for name in table or {}:
        if name == "knob" or name in own:
            use = "knob / target_flop_ratio" if name == "knob" else own[name]
            raise ValueError(f"{field} may not set {name!r}: use the cell field {use}")


def check_cache(cell: Cell) -> None:
    """The cache policy's knob and options (by building it), and its composition with the
    exit policy."""
    fields = ("cache_knob", "cache_args", *CACHE_OPTION_FIELDS)
    if cell.cache == "none":
        if any(getattr(cell, f) is not None for f in fields):
            raise ValueError(f"{' / '.join(fields)} need a cache policy (field 'cache')")
        return
    _check_args(cell.cache_args, "cache_args", {"branch": "cache_branch", "order": "cache_order"})
    for name, cache in CACHE_OPTION_FIELDS.items():
        if getattr(cell, name) is not None and cell.cache != cache:
            raise ValueError(f"{name} applies to cache {cache!r}, not {cell.cache!r}")
    spec = cell.cache_spec
    spec.policy_class.check_knob(spec.knob)
    size = model_size(cell.model)
    if (cell.cache_args or {}).get("signal") == "modulated" and size.get("arch") != "dit":
        raise ValueError(
            f"cache_args signal 'modulated' needs a model with the cache_signal capability "
            f"(block 0's adaLN modulation: the DiT sizes); model {cell.model!r} has none, use "
            "signal 'embed'"
        )
    if not spec.policy_class.needs_router:  # (the l2c router is learned by the pipeline)
        spec.build().check_model(size["depth"])
    if POLICIES[cell.policy].runs_blocks:
        raise ValueError(
            f"policy {cell.policy!r} runs every block itself; it does not compose with a "
            "step-level cache (set cache = 'none')"
        )
    exits = POLICIES[cell.policy].knob_name is not None
    check_composition(cell.cache, cell.policy, exits, cell.cfg_exit_together)


def check_policy(cell: Cell) -> None:
    """The exit policy's knob, options, heads and block range (each checked by its owner), and
    which FLOP target tunes it."""
    cls = POLICIES[cell.policy]
    if cell.knob is not None and cell.calibrates_exit:
        raise ValueError("set a policy's knob or a target_flop_ratio to calibrate it, not both")
    if cell.calibrates_exit and cls.knob_name is None:
        raise ValueError(
            f"policy {cell.policy!r} never exits, so it has no FLOP ratio to calibrate; "
            f"drop target_flop_ratio or pick an exit policy ({', '.join(EXITING)})"
            + (" (or leave cache_knob unset to calibrate the cache)" if cell.cache_knob else "")
        )
    if cell.exit_flop_ratio is not None:
        _check_exit_flop_ratio(cell)
    check_pairing(cls, cell.recipe)
    _check_args(cell.policy_args, "policy_args", {"patience": "patience"})
    policy = cell.exit_spec.build()  # the knob's range, the options
    policy.check_model(RECIPES[cell.recipe].heads, model_size(cell.model)["depth"], cell.model)


def _check_exit_flop_ratio(cell: Cell) -> None:
    """``exit_flop_ratio`` calibrates the exits alone before the cache is calibrated to the
    total: it needs a calibrated cache and an exit policy whose knob is not set."""
    check_target(cell.exit_flop_ratio)
    if not cell.calibrates_cache:
        raise ValueError(
            "exit_flop_ratio calibrates the exits before a cache is calibrated to "
            "target_flop_ratio in total: set cache and target_flop_ratio, not cache_knob"
        )
    if cell.knob is not None:
        raise ValueError("set a policy's knob or an exit_flop_ratio to calibrate it, not both")
    if cell.target_flop_ratio > cell.exit_flop_ratio:
        raise ValueError(
            f"a cache only removes FLOPs: target_flop_ratio ({cell.target_flop_ratio}) must be "
            f"<= exit_flop_ratio ({cell.exit_flop_ratio})"
        )


def check_training(cell: Cell) -> None:
    """The fields that feed the cell's training config (which checks their values)."""
    recipe = RECIPES[cell.recipe]
    for name in LOSS_WEIGHTS:
        if getattr(cell, name) != 1.0 and name not in recipe.weights:
            takes = [r for r, rec in RECIPES.items() if name in rec.weights]
            raise ValueError(f"{name} applies to recipes {', '.join(takes)}, not {cell.recipe!r}")
    if "flop_target" in recipe.weights:
        if cell.target_flop_ratio is None:
            raise ValueError(
                f"recipe {cell.recipe!r} trains its routers for the cell's FLOP target: set "
                "target_flop_ratio in (0, 1]"
            )
        if cell.prune_ratio:
            raise ValueError(f"recipe {cell.recipe!r} does not compose with pruning (prune_ratio)")
    if model_size(cell.model).get("arch") == "dit":
        _check_dit(cell)
    if cell.finetune_steps is not None and not recipe.finetune:
        raise ValueError(f"finetune_steps applies to fine-tuned recipes, not {cell.recipe!r}")
    if cell.text is not None:
        check_text(cell.text)
        if cell.dataset not in PROMPT_SETS:
            raise ValueError(
                f"text needs a prompt set; {cell.dataset!r} has none (prompt sets: "
                f"{', '.join(PROMPT_SETS)})"
            )
    elif cell.prompts != "heldout":
        raise ValueError("prompts applies to text-conditioned cells (set text)")


def _check_dit(cell: Cell) -> None:
    """What a DiT (models.dit) cannot do: text conditioning, DeepCache. (UEM and LTE exit
    heads attach to it, models.heads; DyDiT's routers too, adaptive.dydit_blocks; pruning
    handles its attention, pruning.core.)"""
    if cell.text is not None:
        raise ValueError(f"model {cell.model!r} is a DiT: no text conditioning")
    missing = set(CACHES[cell.cache].requires) - {"block_parts"} if cell.cache != "none" else set()
    if missing:
        raise ValueError(
            f"cache {cell.cache!r} needs {', '.join(sorted(missing))}, which a DiT "
            f"({cell.model!r}) lacks"
        )


def check_conditioning(cell: Cell) -> None:
    """Guidance, CFG-paired exits and the device."""
    if cell.guidance is not None and not cell.guidance >= 0:
        raise ValueError(f"guidance must be >= 0 (or unset), got {cell.guidance}")
    if cell.guidance is not None and cell.text is None:
        if dataset_info(cell.dataset).num_classes == 0:
            raise ValueError(
                f"guidance needs a condition: {cell.dataset!r} has no class labels (set text, "
                "or use a labelled data set)"
            )
    if cell.cfg_exit_together and cell.guidance is None:
        raise ValueError("cfg_exit_together needs a guidance scale")
    if cell.cfg_exit_together and POLICIES[cell.policy].batch_mean:
        raise ValueError(
            f"cfg_exit_together cannot apply to {cell.policy!r}, which decides once per batch"
        )
    if cell.device != "cpu" and not cell.device.startswith(("cuda", "mps")):
        raise ValueError(f"unknown device {cell.device!r}; valid choices: cpu, cuda, cuda:N")
