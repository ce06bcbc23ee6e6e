"""One serde for every producer and consumer: pydantic models to orjson bytes and back."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class PoisonMessage(Exception):
    """A record that cannot be decoded or breaks the contract; it belongs in the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def encode_document(document: dict[str, Any]) -> bytes:
    """Bytes of a model already dumped with `model_dump(mode="json")`."""
    return orjson.dumps(document)


def encode_key(key: str) -> bytes:
    return key.encode("utf-8")


def decode(model_type: type[M], raw: bytes | None) -> M:
    """Decode bytes into the contract model, or raise `PoisonMessage` naming what is wrong."""
    if raw is None:
        raise PoisonMessage("empty value (tombstone) where an event was expected")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"not valid JSON: {exc}") from exc
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise PoisonMessage("breaks the contract: " + describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(body)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
