"""The floor of the suite's compute: the block loop and the contracts that plug into it.

:class:`EarlyExitDenoiser` runs a layer-wise model block by block; exit policies
(:class:`ExitPolicy`, implemented in :mod:`adaptive`) and step-level caches
(:class:`CachePolicy`, implemented in :mod:`caching`) plug into it through :class:`ExitContext`
and the cache hooks; :class:`CostModel` and :class:`FlopMeter` account every FLOP it executes.
This package imports only :mod:`models`; everything that plugs in sits above it.
"""

from blockloop.contracts import CachePolicy, ExitContext, ExitPolicy, check_composition
from blockloop.cost import CostModel, FlopMeter
from blockloop.executor import EarlyExitDenoiser, ExitTrace
from blockloop.flops import count_flops, flop_counter

__all__ = [
    "CachePolicy",
    "CostModel",
    "EarlyExitDenoiser",
    "ExitContext",
    "ExitPolicy",
    "ExitTrace",
    "FlopMeter",
    "check_composition",
    "count_flops",
    "flop_counter",
]
