"""python -m services.order: serve on <NAME>_HOST and <NAME>_PORT from the settings."""

from services.order.config import OrderSettings
from services.order.main import create_app
from shared.runtime.app import serve

serve(create_app, OrderSettings())
