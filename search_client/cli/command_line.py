"""A command line rebuilt from what the user gave (to print the exact command that continues an interrupted job)."""

from __future__ import annotations

import shlex
from collections.abc import Collection

import click
from click.core import ParameterSource


def given_arguments(ctx: click.Context, *, skip: Collection[str] = ()) -> list[str]:
    """The parameters of ``ctx``'s command that were given on the command line (not defaults, not environment
    variables), as arguments in the command's parameter order; ``skip`` names parameters to leave out."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in skip or ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[name]
        if not isinstance(param, click.Option):
            args.extend(str(v) for v in (value if param.nargs != 1 else [value]))
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        else:
            for item in (value if param.multiple else [value]):
                args.extend([param.opts[0], str(item)])
    return args


def join(program: str, args: list[str]) -> str:
    """``program`` and ``args`` as one line a POSIX shell runs as given (quoted where needed)."""
    return shlex.join([program, *args])
