# CPU profiler: torch (CPU build) + ONNX Runtime. Multi-arch: amd64 servers and arm64 boards (the mobile/ARM case,
# where the defaults below measure ort-cpu with 1 thread).
#   docker build -f docker/profiler-cpu.Dockerfile -t proxyless-hw/profiler-cpu .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROFILER_BACKENDS=ort-cpu \
    PROFILER_THREADS=1 \
    PROFILER_DB_URL=sqlite:////data/latency.db

WORKDIR /app
# The CPU wheel index serves torch for amd64 and arm64 without the CUDA packages.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY nas_ops nas_ops
COPY latency_db latency_db
COPY profiler_service profiler_service
COPY search_client search_client
RUN pip install . && python -c "import profiler_service.api.app"
COPY docker/entrypoint-profiler.sh docker/healthcheck.py /usr/local/bin/

RUN useradd --create-home --uid 10001 profiler && mkdir -p /data && chown profiler /data
USER profiler
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 CMD ["python", "/usr/local/bin/healthcheck.py"]
ENTRYPOINT ["/bin/sh", "/usr/local/bin/entrypoint-profiler.sh"]
