"""The studies: everything that runs the harness to answer a question, kept out of its core.

- report figures of a grid sweep, one module per figure (``fig_pareto``, ``fig_prune``,
  ``fig_axes``, ``fig_exit_maps``, ``fig_samples``; :mod:`bench.report` draws them, shared
  helpers in :mod:`bench.studies.plotting`);
- the documentation's studies, each a ``python -m bench.studies.<name>`` command: the DeeDiff
  ablation (``ablation``, ``ablation_tables``, ``ablation_figures``), the training curve
  (``curve``), the figure scripts (``fig_backbone``, ``fig_exits``, ``fig_pruning``), the
  batched wall-clock of the exit executor (``throughput``), every documented figure rebuilt in
  one go (``figures``), and the shipped artifacts (``ship``).

Nothing in the harness core (:mod:`bench.cell`, :mod:`bench.pipeline`, :mod:`bench.run`,
:mod:`bench.store`, :mod:`bench.executors`, :mod:`bench.grid`) imports this package, except
:mod:`bench.report`, the front door of the figure registry.
"""
