"""The hutch server (FastAPI on uvicorn)."""

from hutch.server._app import create_app
from hutch.server._config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
