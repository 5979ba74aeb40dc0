"""The studies the harness feeds: report figures of a grid sweep, one module per concern
(:mod:`bench.report` draws them; shared helpers in :mod:`bench.studies.plotting`)."""
