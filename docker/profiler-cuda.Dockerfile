# CUDA profiler: CUDA torch + onnxruntime-gpu (backends torch-cuda, ort-cuda, and ort-tensorrt when present).
#   docker build -f docker/profiler-cuda.Dockerfile -t proxyless-hw/profiler-cuda .
# Run with the NVIDIA container toolkit: docker run --gpus all ... (compose: profile "gpu").
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROFILER_BACKENDS=torch-cuda,ort-cuda,torch-cpu,ort-cpu \
    PROFILER_THREADS=1 \
    PROFILER_DB_URL=sqlite:////data/latency.db

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY pyproject.toml README.md ./
COPY nas_ops nas_ops
COPY latency_db latency_db
COPY profiler_service profiler_service
COPY search_client search_client
# The GPU build of ONNX Runtime replaces the CPU one that the project depends on (both own the same module).
RUN pip install . && pip uninstall -y onnxruntime && pip install onnxruntime-gpu
COPY docker/entrypoint-profiler.sh docker/healthcheck.py /usr/local/bin/

RUN useradd --create-home --uid 10001 profiler && mkdir -p /data && chown profiler /data
USER profiler
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=90s --retries=3 CMD ["python", "/usr/local/bin/healthcheck.py"]
ENTRYPOINT ["/bin/sh", "/usr/local/bin/entrypoint-profiler.sh"]
