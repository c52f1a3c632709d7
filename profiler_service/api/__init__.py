"""The HTTP API: app factory, routers, deps, schemas, errors, limits, metrics."""
