"""The ``proxyless-search`` Typer app; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="proxyless-search",
    help="ProxylessNAS search client: latency tables, search, export and verification.",
    no_args_is_help=True,
    add_completion=False,
    # click's plain help: rich's option table cuts long option names at 80 columns; click's wraps help text only
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


@app.callback()
def _root() -> None:
    """ProxylessNAS search client: latency tables, search, export and verification."""
