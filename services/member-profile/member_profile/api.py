"""HTTP edge of member-profile: parse, call one handler, shape the response."""

from decimal import Decimal
from typing import Annotated, Any, Literal

from crm_shared.auth import Principal, require_role
from crm_shared.events import Identifier
from crm_shared.web import ApiError, error_body, install_common, service_lifespan
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from member_profile import SERVICE_NAME
from member_profile.handlers import MemberRefusal
from member_profile.members import Channel, ConsentGiven, ContactDetails, Enrolment, normalise_email, normalise_phone


class Redemption(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: int = Field(strict=True, gt=0, le=10_000_000)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=90, pattern=r"^[A-Za-z0-9._:\-]+$")]


class MemberLookup(BaseModel):
    """Who to find: exactly one of the three. In the body, not the URL: a phone number or an e-mail
    address in a query string ends up in proxies' and browsers' logs and histories."""

    model_config = ConfigDict(extra="forbid")

    phone: str | None = Field(default=None, min_length=1, max_length=40)
    email: str | None = Field(default=None, min_length=1, max_length=254)
    card_number: str | None = Field(default=None, pattern=r"^\d{6,19}$", description="6 to 19 digits")


class ConsentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    granted: bool = Field(strict=True)
    source: Identifier
    at: AwareDatetime | None = None


def create_app(service: Any) -> FastAPI:
    app = FastAPI(title="Retail CRM — member-profile", version="0.2.0", lifespan=service_lifespan(service),
                  description="Members, consent and erasure; 360° profiles kept from every sale in event time "
                              "(`as_of` in every answer); loyalty points and tiers; the key-customer call list.")
    app.state.keyring = service.keyring
    profiles = service.handlers
    members = service.members
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    reader = require_role("ops", "marketing")
    front_desk = require_role("ops", "pos")
    any_staff = require_role("ops", "marketing", "pos")
    ops_only = require_role("ops")

    @app.exception_handler(MemberRefusal)
    async def _refused(_: Request, exc: MemberRefusal) -> JSONResponse:
        return JSONResponse({**error_body(exc.error, exc.field, exc.reason), **exc.extra}, status_code=exc.status)

    @app.post("/v1/members", status_code=201, tags=["members"], summary="Enrol a member (card, contact, consent)")
    async def enrol(enrolment: Enrolment, principal: Annotated[Principal, Depends(front_desk)]) -> Any:
        return await members.enrol(enrolment, principal)

    @app.post("/v1/members/lookup", tags=["members"], summary="Find a member by phone, e-mail or card number")
    async def lookup(wanted: MemberLookup, principal: Annotated[Principal, Depends(front_desk)]) -> Any:
        given = [v for v in (wanted.phone, wanted.email, wanted.card_number) if v is not None]
        if len(given) != 1:
            raise ApiError(422, "validation_failed", "body", "give exactly one of phone, email, card_number")
        try:
            phone = normalise_phone(wanted.phone) if wanted.phone is not None else None
            email = normalise_email(wanted.email) if wanted.email is not None else None
        except ValueError as exc:
            raise ApiError(422, "validation_failed", "phone" if wanted.phone is not None else "email", str(exc)) from exc
        return await members.lookup(phone=phone, email=email, card_number=wanted.card_number, principal=principal)

    @app.get("/v1/members/{member_id}", tags=["members"], summary="A member: personal data and consent")
    async def get_member(member_id: Annotated[Identifier, Path()],
                         principal: Annotated[Principal, Depends(any_staff)]) -> Any:
        return await members.member(member_id, principal)

    @app.patch("/v1/members/{member_id}", tags=["members"], summary="Change contact details")
    async def update_member(member_id: Annotated[Identifier, Path()], details: ContactDetails,
                            principal: Annotated[Principal, Depends(front_desk)]) -> Any:
        return await members.update(member_id, details, principal)

    @app.put("/v1/members/{member_id}/consents/{channel}", tags=["members"], summary="Give or withdraw consent")
    async def set_consent(member_id: Annotated[Identifier, Path()], channel: Annotated[Channel, Path()],
                          change: ConsentChange, principal: Annotated[Principal, Depends(front_desk)]) -> Any:
        consent = ConsentGiven(channel=channel, granted=change.granted, source=change.source, at=change.at)
        return await members.set_consent(member_id, consent, principal)

    @app.delete("/v1/members/{member_id}", tags=["members"],
                summary="Erase a member's personal data everywhere (member.erased.v1)")
    async def erase(member_id: Annotated[Identifier, Path()], principal: Annotated[Principal, Depends(ops_only)]) -> Any:
        return await members.erase(member_id, principal)

    @app.get("/v1/members/{member_id}/profile", tags=["profiles"], summary="A member's 360° profile")
    async def get_profile(member_id: Annotated[Identifier, Path()],
                          _: Annotated[Principal, Depends(reader)]) -> Any:
        view = await profiles.profile(member_id)
        if view is None:
            return JSONResponse(error_body("not_found", "member_id", f"no purchases seen for member {member_id!r}"), 404)
        return view

    @app.get("/v1/members/{member_id}/history", tags=["profiles"], summary="A member's purchases, newest first")
    async def get_history(member_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(reader)],
                          limit: Annotated[int, Query(ge=1, le=500)] = 50,
                          before: Annotated[AwareDatetime | None,
                                            Query(description="event time, for the next page")] = None) -> Any:
        if before is not None and not 1990 <= before.year <= 2200:
            raise ApiError(422, "validation_failed", "before", "must be between 1990 and 2200")
        return {"member_id": member_id, "purchases": await profiles.history(member_id, limit, before)}

    @app.get("/v1/members", tags=["profiles"], summary="Members by value (highest net spend first)")
    async def list_members(_: Annotated[Principal, Depends(reader)],
                           tier: Annotated[Literal["member", "silver", "gold", "vip"] | None, Query()] = None,
                           min_monetary: Annotated[Decimal | None, Query(ge=-10**12, le=10**12)] = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 50,
                           offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                           segment: Annotated[str | None, Query(
                               max_length=40, pattern=r"^[a-z0-9_\-]+$",
                               description="a segmenter segment: value tier (champions…), persona or cluster-N")] = None,
                           ) -> Any:
        return await profiles.members(min_monetary=min_monetary, tier=tier, limit=limit, offset=offset, segment=segment)

    @app.get("/v1/members/{member_id}/points", tags=["loyalty"], summary="Points balance and movements")
    async def get_points(member_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(any_staff)]) -> Any:
        return await members.points(member_id)

    @app.post("/v1/members/{member_id}/points/redeem", tags=["loyalty"],
              summary="Redeem points once per idempotency key (409 with the balance if short)")
    async def redeem(member_id: Annotated[Identifier, Path()], redemption: Annotated[Redemption, Body()],
                     _: Annotated[Principal, Depends(front_desk)]) -> Any:
        return await members.redeem(member_id, redemption.points, redemption.idempotency_key)

    @app.get("/v1/call-list", tags=["stores"], summary="Key customers overdue by their own rhythm, for a store")
    async def call_list(principal: Annotated[Principal, Depends(front_desk)], store: Annotated[Identifier, Query()],
                        limit: Annotated[int, Query(ge=1, le=200)] = 25) -> Any:
        return await members.call_list(store, limit, principal)

    return app
