"""Step-level feature caching (DeepCache, FORA, a TeaCache-style adaptive rule,
Learning-to-Cache) as policies of the layer-wise executor; see :mod:`caching.policies`."""

from caching.policies import CACHE_OPTIONS, CACHES, CachePolicy, make_cache

__all__ = ["CACHES", "CACHE_OPTIONS", "CachePolicy", "make_cache"]
