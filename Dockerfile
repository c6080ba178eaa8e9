# The container image for Kubeflow runs (python -m pipeline compile-kfp --image ...), for a cluster's
# registry: Debian 13 has the glibc (2.41) TFX 1.21's wheels need, so a plain virtualenv suffices here.
# Where debian:trixie-slim cannot be pulled (this project's machines), tools/container builds the same
# image from the Debian 13 root filesystem tools/env makes, with the same pinned packages (make container-smoke).
FROM debian:trixie-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev g++ ca-certificates dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONPATH=/app
COPY constraints.txt tools/requirements.txt /tmp/
RUN python3 -m venv /opt/venv && pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt
COPY . /app
WORKDIR /app
