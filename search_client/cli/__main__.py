"""``python -m search_client.cli``: the proxyless-search commands."""

from search_client.cli import main

main()
