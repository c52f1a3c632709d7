"""The ``proxyless-search`` Typer app; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="proxyless-search",
    help="ProxylessNAS search client: latency tables, search, export and verification.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """ProxylessNAS search client: latency tables, search, export and verification."""
