"""HTTP edge of the notifier: campaigns for the marketing team, previews, reports, a member's offers."""

from typing import Annotated, Any

from crm_shared.auth import Principal, require_role
from crm_shared.events import Identifier
from crm_shared.web import ApiError, install_common, service_lifespan
from fastapi import Depends, FastAPI, Path
from fastapi.responses import JSONResponse

from notifier import SERVICE_NAME
from notifier.domain import CampaignDefinition

CampaignId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")]


def create_app(service: Any) -> FastAPI:
    app = FastAPI(title="Retail CRM — notifier", version="0.1.0", lifespan=service_lifespan(service),
                  description="Personalised offers on marketing.offers.v1: triggers (cross-sell from basket rules, "
                              "dormant wake-up, tier upgrade, welcome), guards (consent, caps, quiet hours, "
                              "de-duplication, low stock, erasure), control groups and measured uplift per campaign.")
    app.state.keyring = service.keyring
    handlers = service.handlers
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    marketing = require_role("marketing")
    reader = require_role("marketing", "ops")

    def found(value: dict[str, Any] | None, campaign_id: str) -> dict[str, Any]:
        if value is None:
            raise ApiError(404, "not_found", "campaign_id", f"no campaign {campaign_id!r}")
        return value

    @app.get("/v1/campaigns", tags=["campaigns"], summary="Every campaign with its status and offers sent")
    async def list_campaigns(_: Annotated[Principal, Depends(reader)]) -> Any:
        return {"campaigns": await handlers.campaigns()}

    @app.put("/v1/campaigns/{campaign_id}", tags=["campaigns"], summary="Create or change a campaign (as a draft)",
             responses={201: {"description": "Created"}, 422: {"description": "A field is wrong; the answer names it"}})
    async def put_campaign(campaign_id: CampaignId, definition: CampaignDefinition,
                           _: Annotated[Principal, Depends(marketing)]) -> Any:
        document, created = await handlers.put_campaign(campaign_id, definition)
        return JSONResponse(_json(document), status_code=201 if created else 200)

    @app.get("/v1/campaigns/{campaign_id}", tags=["campaigns"], summary="A campaign")
    async def get_campaign(campaign_id: CampaignId, _: Annotated[Principal, Depends(reader)]) -> Any:
        return found(await handlers.campaign(campaign_id), campaign_id)

    @app.post("/v1/campaigns/{campaign_id}/start", tags=["campaigns"], summary="Start issuing offers")
    async def start(campaign_id: CampaignId, _: Annotated[Principal, Depends(marketing)]) -> Any:
        return found(await handlers.set_status(campaign_id, "running"), campaign_id)

    @app.post("/v1/campaigns/{campaign_id}/stop", tags=["campaigns"], summary="Stop issuing offers")
    async def stop(campaign_id: CampaignId, _: Annotated[Principal, Depends(marketing)]) -> Any:
        return found(await handlers.set_status(campaign_id, "stopped"), campaign_id)

    @app.post("/v1/campaigns/{campaign_id}/preview", tags=["campaigns"],
              summary="Audience size, expected control group and sample messages, before it runs")
    async def preview(campaign_id: CampaignId, _: Annotated[Principal, Depends(marketing)]) -> Any:
        return found(await handlers.preview(campaign_id), campaign_id)

    @app.get("/v1/campaigns/{campaign_id}/report", tags=["campaigns"],
             summary="Sent, suppressed by reason, redeemed; conversion treated vs control, uplift with 95% CI")
    async def report(campaign_id: CampaignId, _: Annotated[Principal, Depends(reader)]) -> Any:
        return found(await handlers.report(campaign_id), campaign_id)

    @app.get("/v1/members/{member_id}/offers", tags=["offers"], summary="A member's offers, newest first")
    async def member_offers(member_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(reader)]) -> Any:
        return {"member_id": member_id, "offers": await handlers.member_offers(member_id)}

    return app


def _json(document: dict[str, Any]) -> dict[str, Any]:
    from fastapi.encoders import jsonable_encoder

    return dict(jsonable_encoder(document))
