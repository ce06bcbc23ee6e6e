"""Members as the shop knows them: enrolment, contact details, consent. Pure validation, no I/O.

Personal data lives only in the `members` and `consents` tables of this service; it is never
logged and never put on a topic.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal

from crm_shared.events import PRINTABLE, Identifier
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

Channel = Literal["email", "sms", "push", "phone"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "phone")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[^@\s\x00-\x1f\x7f]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$")
_PHONE_NOISE = re.compile(r"[\s().-]")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=PRINTABLE)]


def normalise_phone(raw: str) -> str:
    """`+44 20 7946 0958` → `+442079460958`; a number must be international (E.164)."""
    phone = _PHONE_NOISE.sub("", raw.strip())
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.match(phone):
        raise ValueError("must be an international number such as +44 20 7946 0958 (E.164)")
    return phone


def normalise_email(raw: str) -> str:
    email = raw.strip()
    if len(email) > 254 or not _EMAIL.match(email):
        raise ValueError("is not an e-mail address")
    local, _, domain = email.partition("@")
    return f"{local}@{domain.lower()}"


class ConsentGiven(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    granted: bool
    source: Identifier = Field(description="Where it was given: a store id, `web`, `app`…")
    at: AwareDatetime | None = Field(default=None, description="When it was given (default: when we recorded it)")


class ContactDetails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    given_name: Name | None = None
    family_name: Name | None = None
    email: str | None = None
    phone: str | None = None
    card_number: Annotated[str, StringConstraints(pattern=r"^\d{6,19}$")] | None = None
    birth_date: date | None = None
    home_store: Identifier | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalise_email(value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return None if value is None else normalise_phone(value)

    @field_validator("birth_date")
    @classmethod
    def _birth_date(cls, value: date | None) -> date | None:
        if value is not None and value.year < 1900:
            raise ValueError("must be after 1900")
        return value


class Enrolment(ContactDetails):
    member_id: Identifier | None = Field(default=None, description="The card's member id; one is made if absent")
    home_store: Identifier
    consents: list[ConsentGiven] = Field(default_factory=list, max_length=8)


def check_birth_date(details: ContactDetails, today: date) -> str | None:
    """A birth date cannot be in the future (the caller passes today)."""
    if details.birth_date is not None and details.birth_date > today:
        return "must not be in the future"
    return None


def consent_time(consent: ConsentGiven, recorded_at: datetime) -> datetime:
    return consent.at or recorded_at
