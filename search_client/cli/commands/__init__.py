"""CLI command modules of proxyless-search."""
