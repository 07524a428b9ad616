"""One parser factory: command-line flags from a dataclass's fields, for every subcommand and script.

``add_dataclass_arguments(parser, Options)`` adds one option per field the dataclass initialises, in the style
transformers' ``HfArgumentParser`` gives ``train`` (the training options and ``TrainingArguments``): each
``some_name`` field is ``--some-name``, and this module's ``ArgumentParser`` reads ``--some_name`` as that too, so
every subcommand takes both spellings, as ``train`` does.
The field's type decides the rest: a ``Literal`` gives the choices, ``bool`` a switch, a list one or more values,
``X | None`` a value of type ``X`` (or the default ``None``). Field metadata adds ``help``, ``choices``,
``metavar``, ``aliases`` (more flags), ``required`` and ``positional`` (an operand such as ``SRC``).
``options_from_args(Options, namespace)`` builds the dataclass back from the parsed values.

Standard library only: the command line builds its parsers before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Literal


def _value_type(hint):
    """``(type, choices, is_list)`` of a field's type hint (``X | None`` read as ``X``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    if typing.get_origin(hint) is list:
        inner, choices, _ = _value_type(typing.get_args(hint)[0])
        return inner, choices, True
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint), False
    return hint, None, False


def flag_names(name: str, aliases=()) -> list[str]:
    """``--some-name``, then any aliases (``ArgumentParser`` reads ``--some_name`` as ``--some-name``)."""
    flag = f"--{name.replace('_', '-')}"
    return [flag, *(a for a in aliases if a != flag)]


def add_dataclass_arguments(parser, cls, title: str | None = None) -> None:
    """One argument of ``parser`` (in a group named ``title``, if given) per init field of dataclass ``cls``."""
    target = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        meta = f.metadata
        kind, choices, many = _value_type(hints[f.name])
        choices = meta.get("choices", choices)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        options = {"help": meta.get("help")}
        if meta.get("positional"):  # required, unless it has a default other than None
            if default is not None:
                options.update(nargs="?", default=default)
            target.add_argument(f.name, metavar=meta.get("metavar", f.name.upper()), **options)
            continue
        if kind is bool:
            options.update(action="store_true")
        else:
            options.update(type=kind, default=default, choices=choices, metavar=meta.get("metavar"))
            if many:
                options["nargs"] = "+"
            if meta.get("required"):
                options["required"] = True
            elif default not in (None, [], False) and options["help"] is not None:
                options["help"] = f"{options['help']} (default: {default})"
        target.add_argument(*flag_names(f.name, meta.get("aliases", ())), dest=f.name, **options)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that reads ``--some_name`` as ``--some-name`` (its subparsers too), so help and
    errors name each option once, in its hyphen spelling."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = {s for action in self._actions for s in action.option_strings}
        spelled = []
        for arg in args:
            flag, eq, value = arg.partition("=")
            if arg == "--":  # everything after it is an operand
                spelled += args[len(spelled) :]
                break
            hyphens = "--" + flag[2:].replace("_", "-")
            swap = flag.startswith("--") and "_" in flag and flag not in known and hyphens in known
            spelled.append(hyphens + eq + value if swap else arg)
        return super().parse_known_args(spelled, namespace)


SPELLINGS = "Every --some-name option also answers to --some_name, as train's (transformers') options do."


def options_from_args(cls, args: argparse.Namespace, **values):
    """``cls`` built from the parsed values of its fields (those ``args`` has), and ``values``."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**given, **values})
