"""A command line rebuilt from what the user gave (to print the exact command that continues an interrupted job).

Typer ships its own copy of click, so parameters and their sources are read by attribute and name, not by class.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

#: The console script of the search client (``[project.scripts]`` in pyproject.toml).
CONSOLE_SCRIPT = "proxyless-search"


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


def program_command() -> list[str]:
    """The command that runs this program again, also without an activated virtualenv: the console script's
    resolved path when it is what runs (``sys.argv[0]``), else this interpreter with ``-m search_client.cli``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == CONSOLE_SCRIPT:
        found = argv0 if Path(argv0).parent != Path() else shutil.which(argv0)
        if found:
            return [str(Path(found).resolve())]
    return [sys.executable, "-m", "search_client.cli"]


def join(program: list[str], args: list[str]) -> str:
    """``program`` and ``args`` as one line a POSIX shell runs as given (quoted where needed)."""
    return shlex.join([*program, *args])
