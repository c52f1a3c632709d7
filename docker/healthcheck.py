"""Container health check: exit 0 when the profiler answers GET /v1/ready (stdlib only: slim images lack curl)."""

import os
import sys
import urllib.request

port = os.environ.get("PROFILER_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/ready", timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
