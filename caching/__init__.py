"""Step-level feature caching (DeepCache, FORA, a TeaCache-style adaptive rule,
Learning-to-Cache, First-Block Cache, TaylorSeer) as policies of the layer-wise executor; see
:mod:`caching.policies`, :mod:`caching.forecast` and the registry :mod:`caching.registry`."""

from blockloop.contracts import CachePolicy
from caching.registry import CACHE_OPTIONS, CACHES, CacheSpec, check_composition, make_cache

__all__ = ["CACHES", "CACHE_OPTIONS", "CachePolicy", "CacheSpec", "check_composition", "make_cache"]
