from services.product.models import Base
from shared.storage.migrations import run_migrations

run_migrations(Base.metadata)
