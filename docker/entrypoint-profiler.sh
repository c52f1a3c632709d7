#!/bin/sh
# Profiler container entry point. Every setting comes from PROFILER_* environment variables
# (see profiler_service/settings.py); `serve` migrates the database to head before it listens.
# A non-loopback bind needs PROFILER_TOKEN (or PROFILER_ALLOW_INSECURE_BIND=true on a trusted network), and
# PROFILER_ALLOWED_HOSTS lists the names clients reach the container by (requests for any other Host are refused).
set -eu
exec proxyless-profiler serve \
    --host "${PROFILER_HOST:-0.0.0.0}" \
    --port "${PROFILER_PORT:-8000}" \
    --log-level "${PROFILER_LOG_LEVEL:-info}" \
    "$@"
