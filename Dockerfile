# One image for the four services; compose.yaml picks the service with `command:`.
#   docker build -t event-driven-shop .
#   docker run --rm -p 127.0.0.1:8002:8002 event-driven-shop \
#       uvicorn services.inventory.main:create_app --factory --host 0.0.0.0 --port 8002
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

EXPOSE 8001 8002 8003 8004

# exec form: uvicorn is PID 1 and gets SIGTERM for a graceful shutdown.
CMD ["uvicorn", "services.order.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8001"]
