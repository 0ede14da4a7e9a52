# One image for every service of services/registry.py; compose.yaml picks one by name.
#   docker build -t event-driven-shop .
#   docker run --rm -p 127.0.0.1:8002:8002 event-driven-shop \
#       python -m services inventory --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. The lock is the whole
# environment (dev tools included): one file, installed as is.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# A non-root user. It owns .run only, so the default SQLite databases (.run/data) work
# when the image runs without a <NAME>_DATABASE_URL; the code itself stays read-only.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin app \
    && mkdir -p /app/.run/data \
    && chown -R app:app /app/.run

COPY shared/ shared/
COPY services/ services/
COPY tools/ tools/

USER app

# The registry's ports (tests/unit/test_compose.py keeps them equal).
EXPOSE 8001 8002 8003 8004

# exec form: python (uvicorn inside it) is PID 1 and gets SIGTERM for a graceful shutdown.
CMD ["python", "-m", "services", "order", "--host", "0.0.0.0"]
