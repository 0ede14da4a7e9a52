"""python -m services.inventory: serve on <NAME>_HOST and <NAME>_PORT from the settings."""

from services.inventory.config import InventorySettings
from services.inventory.main import create_app
from shared.runtime.app import serve

serve(create_app, InventorySettings())
