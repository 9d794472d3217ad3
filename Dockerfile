# convnet-service: Gunicorn + Flask serving LiteRT engines. Build: docker build -t convnet-service .
# `deps` installs the serving packages from the lock; `app` adds the project and builds its C digit
# kernel; `engines` adds TensorFlow and converts the committed SavedModels (Grad-CAM included) to
# LiteRT. The runtime copies their results and has neither TensorFlow nor a compiler
# (docs/container.md has its size, cold start and memory). It runs with a read-only root
# filesystem: everything it writes goes to /tmp (a tmpfs in compose).
FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /app

FROM base AS deps
# Unpinned: Debian's security updates replace pinned versions, and this stage's toolchain never
# reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/ requirements/
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --require-hashes -r requirements/serve.txt

FROM deps AS app
# Editable, as in the README and CI: the kernel is built in place, into /app/service, where
# Gunicorn (its working directory first on sys.path) imports it from. A kernel that did not build
# fails the build, naming the cause (setup.py), instead of serving the slower Python fallback.
COPY pyproject.toml setup.py README.md ./
COPY service/ service/
COPY training/ training/
RUN CONVNET_REQUIRE_DIGIT_KERNEL=1 pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python -c "import service._digit"

# TensorFlow in a layer of its own, before the sources: changing the code does not reinstall it.
FROM deps AS engines
RUN pip install --no-cache-dir --require-hashes -r requirements/convert.txt
COPY service/ service/
COPY models/ models/
RUN TF_CPP_MIN_LOG_LEVEL=3 CONVNET_MODELS_DIR=/app/models CONVNET_ENGINE_CACHE=/app/engines \
    python -m service.cli prepare-engines --all-versions \
    && chmod -R u=rwX,go=rX /app/engines

FROM base
RUN groupadd --system --gid 10001 convnet \
    && useradd --system --uid 10001 --gid convnet --no-create-home --home-dir /nonexistent convnet
COPY --from=app /opt/venv /opt/venv
COPY --from=app /app /app
COPY models/ models/
# Root-owned and not writable by the service: check_cache (service/engines.py) trusts it.
COPY --from=engines /app/engines /app/engines
USER 10001:10001

# Gunicorn on every interface; the multiprocess metrics directory and every other write on tmpfs.
ENV CONVNET_MODELS_DIR=/app/models \
    CONVNET_ENGINE_CACHE=/app/engines \
    GUNICORN_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    HOME=/tmp

EXPOSE 8000

# /readyz answers 200 once the answering worker has loaded its models; urlopen raises on 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# The same Gunicorn configuration file the tests use.
CMD ["gunicorn", "--config", "service/gunicorn.conf.py"]
