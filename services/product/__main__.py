"""python -m services.product: serve on <NAME>_HOST and <NAME>_PORT from the settings."""

from services.product.config import ProductSettings
from services.product.main import create_app
from shared.runtime.app import serve

serve(create_app, ProductSettings())
