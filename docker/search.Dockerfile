# Search job: the ProxylessNAS search client (CPU torch by default; pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 on a GPU training host).
#   docker build -f docker/search.Dockerfile -t proxyless-hw/search .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg

WORKDIR /app
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY pyproject.toml README.md ./
COPY nas_ops nas_ops
COPY latency_db latency_db
COPY profiler_service profiler_service
COPY search_client search_client
RUN pip install . && python -c "import search_client.cli"
COPY docker/entrypoint-search.sh /usr/local/bin/

RUN useradd --create-home --uid 10001 search && mkdir -p /runs && chown search /runs
USER search
VOLUME ["/runs"]
# A batch job: its exit status is its health; the check only proves the client can start.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 CMD ["proxyless-search", "--help"]
ENTRYPOINT ["/bin/sh", "/usr/local/bin/entrypoint-search.sh"]
