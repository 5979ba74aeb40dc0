"""What every command line shares: one parser factory, one help format, options worded once.

Every ``python -m bench.*`` command builds its parser with :func:`make_parser`, so ``--help``
reads the same everywhere: the module docstring as plain text (reStructuredText roles and
double back-quotes stripped), and every option with its help and its default.
``tests/test_cli_help.py`` holds every command to that.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench.cache import ArtifactCache, preflight
from bench.plugins import PluginError, load_plugins, plugins_in

__all__ = [
    "HelpFormatter",
    "add_run_options",
    "add_save_every",
    "at_least",
    "make_parser",
    "plain_text",
]

_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|ref|doc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(doc: str | None) -> str:
    """A docstring as a terminal shows it: ``:func:`x``` and double back-quoted literals
    become plain ``x``; everything else (line breaks, lists) is kept."""
    if not doc:
        return ""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc)).strip()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (line breaks kept) and each option's default appended
    once, unless its help already states it as ``(default: ...)``. Flags (``store_true``)
    are off by default and say nothing more."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.nargs == 0
            or action.default is argparse.SUPPRESS
            or "(default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that loads the plugins named on the command line (and the installed
    ones) before it checks any argument, so a plugin's names are valid choices, and that checks
    every folder the command writes (``--out`` when given, ``--cache-dir`` or its default) before
    the command does any work (:func:`bench.cache.preflight`: one line, exit code 2)."""

    def parse_known_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        try:
            load_plugins(plugins_in(argv))
        except PluginError as e:
            self.error(str(e))
        ns, rest = super().parse_known_args(argv, namespace)
        try:
            preflight(*_written(ns))
        except ValueError as e:
            self.error(str(e))
        return ns, rest


def _written(ns: argparse.Namespace) -> list[Path]:
    """The folders a parsed command line will write: ``--out`` (when set) and the cache; none
    for a command that only lists or checks (``--list``, ``--dry-run``, ``--check``)."""
    if any(getattr(ns, flag, False) for flag in ("list", "dry_run", "check")):
        return []
    paths = [Path(ns.out)] if getattr(ns, "out", None) is not None else []
    if hasattr(ns, "cache_dir"):
        paths.append(ArtifactCache(ns.cache_dir).root)
    return paths


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m <prog>``, described by its module docstring ``doc``; every
    command takes ``--plugin MODULE`` (:mod:`bench.plugins`)."""
    p = _Parser(
        prog=f"python -m {prog}", description=plain_text(doc), formatter_class=HelpFormatter
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: the exit policies, caches, samplers, criteria and model "
        "sizes it registers become valid choices (repeatable; bench.plugins)",
    )
    return p


def add_run_options(p: argparse.ArgumentParser, out: str | None = None) -> None:
    """``--out`` (when the command writes a folder), ``--cache-dir`` and ``--device``."""
    if out is not None:
        p.add_argument("--out", default=out, help="output folder")
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, else an argparse error (exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def add_save_every(p: argparse.ArgumentParser) -> None:
    """``--save-every``: how often a training run saves its state to resume from."""
    from bench.resume import DEFAULT_SAVE_EVERY

    def steps(text: str) -> int:
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"save_every must be >= 0 (0: never save), got {text}")
        return value

    p.add_argument(
        "--save-every",
        type=steps,
        default=DEFAULT_SAVE_EVERY,
        help="training saves its whole state every N steps under <cache>/resume/, and the "
        "same command continues from it after a kill (0: never save)",
    )


def add_config_options(
    p: argparse.ArgumentParser, cls: type, names: tuple[str, ...], explicit: tuple[str, ...] = ()
) -> None:
    """One ``--field-name`` option per dataclass field in ``names``, its type, default, help and
    choices read from the field (``metadata={"help": ..., "choices": ...}``): the config class
    is the one source of the command's options. A ``bool`` field is a flag; ``T | None`` takes
    a ``T``. Fields in ``explicit`` default to None, so that a caller can tell whether the option
    was given (and refuse one that has no effect), their help naming the real default."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f, hint = fields[name], hints[name]
        flag, meta = "--" + name.replace("_", "-"), f.metadata
        if hint is bool:
            p.add_argument(flag, action="store_true", help=meta["help"])
            continue
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kind = next(a for a in args if a is not type(None))
        kw: dict = {"type": kind, "default": f.default, "help": meta["help"]}
        if "choices" in meta:
            kw["choices"] = meta["choices"]  # the live registry: plugins extend it
        if name in explicit:
            kw["default"] = None
            kw["help"] = f"{meta['help']} (default: {f.default:g})"
        p.add_argument(flag, **kw)
