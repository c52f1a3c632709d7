"""A command line rebuilt from what the user gave (to print the exact command that continues an interrupted job).

Typer ships its own copy of click, so parameters and their sources are read by attribute and name, not by class.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from typing import Any


def given_on_command_line(ctx: Any, name: str) -> bool:
    """Whether parameter ``name`` of the running command was given on the command line (not a default, not an
    environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def given_arguments(ctx: Any, *, skip: Collection[str] = ()) -> list[str]:
    """The parameters of ``ctx``'s command given on the command line, as arguments in the command's parameter
    order; ``skip`` names parameters to leave out."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in skip or not given_on_command_line(ctx, name):
            continue
        value = ctx.params[name]
        if param.param_type_name != "option":
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
