"""HTTP edge of member-profile: parse, call one handler, shape the response."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from crm_shared.auth import Principal, require_role
from crm_shared.events import Identifier
from crm_shared.web import error_body, install_common, service_lifespan
from fastapi import Depends, FastAPI, Path, Query
from fastapi.responses import JSONResponse

from member_profile import SERVICE_NAME


def create_app(service: Any) -> FastAPI:
    app = FastAPI(title="Retail CRM — member-profile", version="0.1.0", lifespan=service_lifespan(service),
                  description="360° member profiles kept from every sale in event time (`as_of` in every answer).")
    app.state.keyring = service.keyring
    handlers = service.handlers
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    reader = require_role("ops", "marketing")

    @app.get("/v1/members/{member_id}/profile", tags=["profiles"], summary="A member's 360° profile")
    async def get_profile(member_id: Annotated[Identifier, Path()],
                          _: Annotated[Principal, Depends(reader)]) -> Any:
        view = await handlers.profile(member_id)
        if view is None:
            return JSONResponse(error_body("not_found", "member_id", f"no purchases seen for member {member_id!r}"), 404)
        return view

    @app.get("/v1/members/{member_id}/history", tags=["profiles"], summary="A member's purchases, newest first")
    async def get_history(member_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(reader)],
                          limit: Annotated[int, Query(ge=1, le=500)] = 50,
                          before: Annotated[datetime | None, Query(description="event time, for the next page")] = None) -> Any:
        return {"member_id": member_id, "purchases": await handlers.history(member_id, limit, before)}

    @app.get("/v1/members", tags=["profiles"], summary="Members by value (highest net spend first)")
    async def list_members(_: Annotated[Principal, Depends(reader)],
                           min_monetary: Annotated[Decimal | None, Query()] = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 50,
                           offset: Annotated[int, Query(ge=0)] = 0) -> Any:
        return await handlers.members(min_monetary, limit, offset)

    return app
