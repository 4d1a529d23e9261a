"""The operator API: a thin FastAPI shell over the registry, stores and Kafka intents."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import audit, errors
from api.background import SecurityWorkers
from api.routes import audit as audit_routes
from api.routes import auth, ca, certificates, claims, devices, health, keys, telemetry, templates
from fleet.config import Settings
from fleet.identity.pki import LocalPKI
from fleet.infra.cassandra import CassandraSessions
from fleet.logs import configure_logging


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging("api", settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Counted, because test clients may open a second lifespan on the same app: only the
        # last one to end stops the workers and closes the store (and forgets what used it).
        app.state.lifespans += 1
        if app.state.lifespans == 1:
            app.state.workers = SecurityWorkers(app).start()
        try:
            yield
        finally:
            app.state.lifespans -= 1
            if app.state.lifespans == 0:
                app.state.workers.stop()
                app.state.stores.clear()
                app.state.cassandra.shutdown()

    app = FastAPI(
        title="Fleet Platform API",
        version="0.1.0",
        description="Register devices, read shadows and telemetry, send commands, roll out firmware. "
                    "Every /v1 route needs an API key ('X-API-Key' or 'Authorization: Bearer').",
        lifespan=lifespan,
        responses=errors.ERROR_RESPONSES,
    )
    app.state.settings = settings
    # Connected lazily on the first request that needs it (see api/deps.py).
    app.state.cassandra = CassandraSessions(settings)
    app.state.stores = {}
    app.state.lifespans = 0
    app.state.pki = LocalPKI(settings.pki_dir, validity_days=settings.cert_validity_days)
    audit.install(app)
    errors.install(app, settings.api_max_body_bytes)
    app.include_router(health.router)
    for module in (devices, telemetry, certificates, keys, auth, audit_routes, templates, claims, ca):
        app.include_router(module.router)
    return app
