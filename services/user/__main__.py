"""python -m services.user: serve on <NAME>_HOST and <NAME>_PORT from the settings."""

from services.user.config import UserSettings
from services.user.main import create_app
from shared.runtime.app import serve

serve(create_app, UserSettings())
