"""The operator API: a thin FastAPI shell over the registry, stores and Kafka intents."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import audit, errors
from api.background import SecurityWorkers
from api.command_batches import BatchRunner
from api.command_requests import CommandRequests
from api.ota_requests import OtaRequests
from api.routes import audit as audit_routes
from api.routes import (
    auth,
    ca,
    certificates,
    claims,
    command_batches,
    commands,
    devices,
    firmware,
    health,
    keys,
    ota,
    ota_download,
    shadow,
    telemetry,
    templates,
)
from api.shadow_requests import ShadowRequests
from api.stores import Stores
from fleet.config import Settings
from fleet.logs import configure_logging

# Every /v1 route: authentication (401) reads the key store (503 while it is down). FastAPI adds
# the 422 to routes with parameters; routes add their own (api/errors.py responses()).
V1_RESPONSES = errors.responses(401, 503)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging("api", settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Counted, because a test client may open a second lifespan on the same app (schemathesis
        # does, beside the TestClient): they share one set of stores and workers, and only the
        # last one to end stops the workers and closes the stores.
        app.state.lifespans += 1
        if app.state.lifespans == 1:
            app.state.stores = Stores(settings)
            app.state.workers = SecurityWorkers(app.state.stores).start()
            # Connects to Kafka on the first shadow change, not here (the API starts while Kafka is down).
            app.state.shadow_requests = ShadowRequests(settings)
            app.state.command_requests = CommandRequests(settings)
            app.state.ota_requests = OtaRequests(settings)
            app.state.batch_runner = BatchRunner()
        try:
            yield
        finally:
            app.state.lifespans -= 1
            if app.state.lifespans == 0:
                await app.state.batch_runner.close()
                app.state.workers.stop()
                app.state.shadow_requests.close()
                app.state.command_requests.close()
                app.state.ota_requests.close()
                app.state.stores.close()

    app = FastAPI(
        title="Fleet Platform API",
        version="0.1.0",
        description="Register devices, read shadows and telemetry, send commands, roll out firmware. "
                    "Every /v1 route needs an API key ('X-API-Key' or 'Authorization: Bearer'). "
                    "Errors are 4xx (503 while the store is down) with a JSON body {\"detail\": message}. "
                    "Lists that page take 'limit' and 'page_token' and return 'next_page_token' (null on "
                    "the last page).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.lifespans = 0
    audit.install(app)
    # A firmware image is the one large body: its route has its own limit (still enforced here).
    errors.install(app, settings.api_max_body_bytes,
                   {("POST", firmware.UPLOAD_PATH): settings.firmware_max_image_bytes})
    app.include_router(health.router)
    for module in (devices, shadow, commands, command_batches, telemetry, certificates, keys, auth, audit_routes,
                   templates, claims, ca, firmware, ota):
        app.include_router(module.router, responses=V1_RESPONSES)
    # Devices download with the signed URL as their only credential: no API key, so no 401.
    app.include_router(ota_download.router)
    return app
