"""The operator API: a thin FastAPI shell over the registry, stores and Kafka intents."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.routes import health
from fleet.db import CassandraSessions
from fleet.logs import configure_logging
from fleet.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging("api", settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.cassandra.shutdown()

    app = FastAPI(
        title="Fleet Platform API",
        version="0.1.0",
        description="Register devices, read shadows and telemetry, send commands, roll out firmware.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Connected lazily on the first request that needs it (see api/deps.py).
    app.state.cassandra = CassandraSessions(settings)
    app.state.stores = {}
    app.include_router(health.router)
    return app
