"""Every command's ``--help`` explains every option and its default, in plain text."""

from __future__ import annotations

import argparse
import importlib

import pytest

from bench.cli import HelpFormatter, plain_text

COMMANDS = [
    "bench.studies.ablation",
    "bench.studies.curve",
    "bench.studies.fig_backbone",
    "bench.studies.fig_exits",
    "bench.studies.fig_pruning",
    "bench.studies.figures",
    "bench.studies.prunewall",
    "bench.grid",
    "bench.prune",
    "bench.report",
    "bench.studies.ship",
    "bench.text",
    "bench.studies.throughput",
    "bench.train",
]


class _Parsed(Exception):
    pass


def _parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught when it parses (nothing runs)."""
    seen = {}

    def capture(self, *args, **kwargs):
        seen["parser"] = self
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        importlib.import_module(module).main([])
    return seen["parser"]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_has_help_and_default(module, monkeypatch):
    p = _parser(module, monkeypatch)
    assert isinstance(p.formatter_class, type) and issubclass(p.formatter_class, HelpFormatter)
    text = p.format_help()
    assert p.prog == f"python -m {module}"
    assert "``" not in text and ":func:" not in text and ":mod:" not in text, text
    formatter = p._get_formatter()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{module} {name} has no help"
        shown = formatter._expand_help(action)
        if action.option_strings and action.nargs != 0:
            assert "(default" in shown, f"{module} {name} does not state its default: {shown!r}"
            assert shown.count("(default") <= 1, f"{module} {name}: default twice: {shown!r}"


def test_plain_text_strips_rst_markup():
    doc = "Runs :func:`bench.run.run_cell` on ``cells``; see :mod:`bench.store`.\n\n- a list"
    assert plain_text(doc) == "Runs bench.run.run_cell on cells; see bench.store.\n\n- a list"


def test_default_is_appended_once():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--a", default=3, help="a number")
    p.add_argument("--b", default=None, help="a folder (default: <repo>/x)")
    p.add_argument("--c", action="store_true", help="a flag")
    p.add_argument("--d", default=5, help="samples of the default sweep")
    text = " ".join(p.format_help().split())
    assert "a number (default: 3)" in text
    assert "a folder (default: <repo>/x)" in text and "(default: None)" not in text
    assert "a flag (default" not in text
    assert "samples of the default sweep (default: 5)" in text
