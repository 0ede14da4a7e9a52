"""python -m services.order: serve on <NAME>_HOST and <NAME>_PORT from the settings."""

from services.order.config import OrderSettings
from services.order.main import create_app
from shared.runtime.service import serve

serve(create_app, OrderSettings())
