# convnet-service: Gunicorn + Flask + TensorFlow SavedModels. Build: docker build -t convnet-service .
# Runs with a read-only root filesystem: everything it writes goes to /tmp (a tmpfs in compose).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The same install command as the README and CI, editable as there: it builds service/_digit.c
# (the digit normalisation's per-pixel steps) in place, into /app/service. Gunicorn puts its
# working directory first on sys.path, so a plain `pip install .` put the kernel where nothing
# imported it, and the image ran the slower Python reference. gcc leaves in the same layer.
# Unpinned: Debian's security updates replace pinned versions, and a toolchain that is gone when
# the layer ends runs nothing.
COPY pyproject.toml setup.py README.md ./
COPY service/ service/
COPY training/ training/
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m pip install --no-cache-dir -e . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# The committed models, baked in: the image is the release. Their LiteRT engines are converted
# now, so that the container starts in seconds and its workers never import TensorFlow.
COPY models/ models/
ENV CONVNET_MODELS_DIR=/app/models \
    CONVNET_ENGINE_CACHE=/app/engines
RUN TF_CPP_MIN_LOG_LEVEL=3 convnet-service prepare-engines

RUN groupadd --system --gid 10001 convnet \
    && useradd --system --uid 10001 --gid convnet --no-create-home --home-dir /nonexistent convnet
USER 10001:10001

# Gunicorn on every interface; the multiprocess metrics directory and every other write on tmpfs.
ENV GUNICORN_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2

EXPOSE 8000

# /readyz answers 200 once the answering worker has loaded its models; urlopen raises on 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# The same Gunicorn configuration file the tests use.
CMD ["gunicorn", "--config", "service/gunicorn.conf.py"]
