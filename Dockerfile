# One image for every service of services/registry.py and the jobs compose runs beside them
# (the explorer, kafka-init, pginit); compose.yaml names it event-driven-shop:latest.
#   docker build -t event-driven-shop .
#   docker run --rm -p 127.0.0.1:8002:8002 event-driven-shop \
#       python -m services inventory --host 0.0.0.0
# Where python:3.11-slim cannot be pulled, `make images` builds a stand-in from Debian's
# Python 3.11 and passes it here: --build-arg PYTHON_IMAGE=event-driven-shop/python:3.11.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, so code changes do not reinstall them: the runtime lock only (the dev
# tools are in requirements-dev.lock), every file checked against its hash.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# A non-root user. It owns .run only, so the default SQLite databases (.run/data) work
# when the image runs without a <NAME>_DATABASE_URL; the code itself stays read-only.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin app \
    && mkdir -p /app/.run/data \
    && chown -R app:app /app/.run

# .dockerignore lets in the tools that compose runs in this image, nothing else of tools/.
COPY shared/ shared/
COPY services/ services/
COPY tools/ tools/

USER app

# The registry's ports (tests/unit/test_compose.py keeps them equal).
EXPOSE 8001 8002 8003 8004

# exec form: python (uvicorn inside it) is PID 1 and gets SIGTERM for a graceful shutdown.
CMD ["python", "-m", "services", "order", "--host", "0.0.0.0"]
