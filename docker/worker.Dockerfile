# Preprocessing worker: Debian 12, the FFmpeg libraries, cvpipe (with its compiled
# extension) and Ray. Every node of the example cluster (docker/ray-cluster.yaml) runs
# this image; `cvpipe shard` reads videos from and writes shards to shared storage.
#
#   docker build -f docker/worker.Dockerfile -t cvpipe-worker:0.1.0 .
#
# System packages come from scripts/install-system-packages.sh, the script CI runs, so
# the image links the same FFmpeg as the tests do.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/cvpipe

# The script expects sudo or root (root here); it installs the compiler too.
COPY scripts/install-system-packages.sh scripts/
RUN bash scripts/install-system-packages.sh \
 && rm -rf /var/lib/apt/lists/*

# Only what the build needs, so a local build/ or .venv never enters the image.
COPY pyproject.toml README.md CMakeLists.txt ./
COPY native/ native/
COPY cvpipe/ cvpipe/
COPY trainer/ trainer/
# cvpipe's dependencies include ray[default] (the dashboard and `ray job submit`).
RUN pip install . \
 && python -c "import cvpipe, cvpipe._native, ray; print('cvpipe', cvpipe.__version__, 'ray', ray.__version__)"

# Ray's cluster launcher runs its commands as this user in this directory.
WORKDIR /root
CMD ["bash"]
