"""Every service's Alembic env.py: `shared.storage.migrations` sets the versions folder,
the connection and (to autogenerate) the target metadata."""

from shared.storage.migrations import run_migrations

run_migrations()
