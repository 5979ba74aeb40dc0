"""The registry of step-level caches: names, the options a cell may set, construction and the
composition rule by name (:func:`blockloop.contracts.check_composition`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from blockloop.contracts import CachePolicy
from blockloop.contracts import check_composition as _check_composition
from caching.forecast import FirstBlockCache, TaylorSeer
from caching.magcache import MagCache
from caching.policies import DeepCache, Fora, LearningToCache, TeaCache
from caching.teacache import TeaCacheBatch

__all__ = ["CACHES", "CACHE_OPTIONS", "CacheSpec", "check_composition", "make_cache"]

CACHES: dict[str, type[CachePolicy]] = {
    c.name: c
    for c in (
        DeepCache,
        Fora,
        TeaCache,
        TeaCacheBatch,
        MagCache,
        LearningToCache,
        FirstBlockCache,
        TaylorSeer,
    )
}
# Options a policy takes besides its knob (what a cell may set; ``branches`` is set by the
# pipeline under guidance).
CACHE_OPTIONS: dict[str, tuple[str, ...]] = {
    "deepcache": ("branch",),
    "l2c": ("router",),
    "fbcache": ("branches",),
    "teacache-batch": ("coefficients", "calls", "branches", "signal"),
    "magcache": ("ratios", "calls", "max_skips", "retention", "branches"),
    "taylorseer": ("order",),
}


def check_composition(cache: str, policy: str, exits: bool, paired: bool = False) -> None:
    """:func:`blockloop.contracts.check_composition` for the cache registered as ``cache``."""
    if cache not in CACHES:
        raise ValueError(f"unknown cache policy {cache!r}; valid choices: {', '.join(CACHES)}")
    per_row = ", ".join(name for name, c in CACHES.items() if c.per_row)
    _check_composition(CACHES[cache], policy, exits, paired, per_row)


def _keywords(cls: type) -> tuple[str, ...]:
    """The keyword options of a cache class's constructor besides its knob."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind in kinds and p.name not in ("self", "knob"))


def make_cache(name: str, knob: float | None = None, **options: Any) -> CachePolicy:
    """The cache policy registered as ``name`` with its knob and options."""
    if name not in CACHES:
        raise ValueError(f"unknown cache policy {name!r}; valid choices: {', '.join(CACHES)}")
    allowed = sorted({*CACHE_OPTIONS.get(name, ()), *_keywords(CACHES[name])})
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise ValueError(
            f"cache policy {name!r} takes no option {', '.join(extra)}"
            + (f" (it takes: {', '.join(allowed)})" if allowed else "")
        )
    return CACHES[name](knob, **options)


@dataclass(frozen=True)
class CacheSpec:
    """A step-level cache by registry name with its knob (None: the cache's default, or the one
    a calibration finds) and keyword options (:data:`CACHE_OPTIONS`). :meth:`build` validates
    by constructing it; one spec builds a fresh policy object per executor."""

    name: str
    knob: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> CachePolicy:
        """A fresh policy of this spec (``ValueError`` for a bad name or options)."""
        return make_cache(self.name, self.knob, **self.options)

    def with_knob(self, knob: float | None) -> CacheSpec:
        """This spec with its knob replaced by ``knob``."""
        return replace(self, knob=knob)

    @property
    def policy_class(self) -> type[CachePolicy]:
        """The registered :class:`CachePolicy` class of ``name`` (``ValueError`` if unknown)."""
        if self.name not in CACHES:
            raise ValueError(
                f"unknown cache policy {self.name!r}; valid choices: {', '.join(CACHES)}"
            )
        return CACHES[self.name]
