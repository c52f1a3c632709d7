"""Entry point of ``proxyless-search``: imports every command module so that each registers its commands."""

from search_client.cli.app import app

# Each import registers commands on ``app``.
import search_client.cli.commands.inspect  # noqa: E402,F401
import search_client.cli.commands.lut  # noqa: E402,F401
import search_client.cli.commands.search  # noqa: E402,F401
import search_client.cli.commands.spaces  # noqa: E402,F401
import search_client.cli.commands.train  # noqa: E402,F401
import search_client.cli.commands.verify  # noqa: E402,F401

__all__ = ["app"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
