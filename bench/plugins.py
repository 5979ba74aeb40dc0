"""Plugins: exit policies, caches, samplers, pruning criteria, training recipes and model sizes
added from outside the package.

A plugin is an importable module that registers what it adds when imported::

    from bench.plugins import register
    register("policy", MyExitRule)         # an ExitPolicy subclass; its ``name`` is the key
    register("cache", MyCache)             # a CachePolicy subclass
    register("sampler", my_sampler, "my-sampler")
    register("importance", MyCriterion, "my-criterion")
    register("model", {"patch_size": 2, "embed_dim": 64, "depth": 6, "num_heads": 2}, "small")

Every command loads plugins named with ``--plugin MODULE`` (repeatable) before it reads its
arguments, so their names are valid choices in the command line and in sweep files; and every
module of the ``diffcompress.plugins`` entry-point group of the installed distributions (a
package's ``pyproject.toml``: ``[project.entry-points."diffcompress.plugins"] mine =
"my_package.plugin"``). The grid hands the same list to every worker process, local or Dask,
which loads it before it runs a cell. A name already registered is refused: a plugin cannot
silently replace a built-in rule (records made under the name would change meaning).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "load_plugins",
    "plugins_in",
    "register",
    "with_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "diffcompress.plugins"
_loaded: set[str] = set()
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin that cannot be loaded or registered (one line: what and why)."""


def _subclass(base: type) -> Callable[[Any], bool]:
    return lambda obj: isinstance(obj, type) and issubclass(obj, base)


def _registries() -> dict[str, tuple[dict, Callable[[Any], bool], str]]:
    """kind -> (its registry, the test an entry must pass, what that test asks for)."""
    from adaptive.policies import POLICIES
    from adaptive.recipes import RECIPES, Recipe
    from blockloop.contracts import CachePolicy, ExitPolicy
    from caching.registry import CACHES
    from models import MODELS
    from pruning.core import IMPORTANCES, Importance
    from samplers.core import SAMPLERS

    return {
        "policy": (POLICIES, _subclass(ExitPolicy), "a subclass of ExitPolicy"),
        "cache": (CACHES, _subclass(CachePolicy), "a subclass of CachePolicy"),
        "sampler": (SAMPLERS, callable, "a sampler function"),
        "importance": (IMPORTANCES, _subclass(Importance), "a subclass of Importance"),
        "recipe": (RECIPES, lambda obj: isinstance(obj, Recipe), "a Recipe"),
        "model": (MODELS, lambda obj: isinstance(obj, dict), "a dict of U-ViT config fields"),
    }


def register(kind: str, obj: Any, name: str | None = None) -> str:
    """Add ``obj`` to the registry of ``kind`` under ``name`` (default: ``obj.name``) and
    return the name. A PluginError for an unknown kind, an object of the wrong type, or a name
    already taken."""
    registries = _registries()
    if kind not in registries:
        raise PluginError(f"unknown plugin kind {kind!r}; valid choices: {', '.join(registries)}")
    registry, ok, wanted = registries[kind]
    name = name if name is not None else getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"a {kind} needs a name (pass name=..., or give it a `name`)")
    if "/" in name:  # a cell's model with a '/' is a from_pretrained folder (models.pretrained)
        raise PluginError(f"{kind} name {name!r} may not contain '/'")
    if not ok(obj):
        raise PluginError(f"{kind} {name!r} must be {wanted}, got {obj!r}")
    if name in registry:
        raise PluginError(f"{kind} {name!r} is already registered; choose another name")
    registry[name] = obj
    return name


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except PluginError:
        raise
    except Exception as e:  # ImportError, or anything the module raised while registering
        raise PluginError(f"plugin {module!r} failed to import: {type(e).__name__}: {e}") from e


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import each plugin module of ``modules`` once per process, and (once) every module of
    the ``diffcompress.plugins`` entry-point group. A PluginError names the module that failed."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value not in _loaded:
                _import(ep.module)
                _loaded.add(ep.value)
    for module in modules:
        if module not in _loaded:
            _import(module)
            _loaded.add(module)


def with_plugins(plugins: tuple[str, ...], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` after :func:`load_plugins` (``plugins``): the task a worker process runs,
    so a fresh process sees the same registries as the one that submitted it."""
    load_plugins(plugins)
    return fn(*args)


def plugins_in(argv: list[str]) -> list[str]:
    """The modules named by ``--plugin MODULE`` / ``--plugin=MODULE`` in ``argv``."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found
