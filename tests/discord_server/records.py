"""What the fake records: each REST request, uploaded files and violations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .mentions import Pings
from .model import Json

if TYPE_CHECKING:
    from .faults import Fault
    from .interactions import InteractionResponse


class ApiError(Exception):
    """An error answer in Discord's shape; ``violation`` also records it as a test failure."""

    def __init__(
        self, status: int, code: int, message: str, *, violation: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.violation = status, code, message, violation


@dataclass(frozen=True)
class UploadedFile:
    field: str  # "files[0]"
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Violation:
    text: str
    request: str | None  # "POST /channels/1/messages"

    def __str__(self) -> str:
        return f"{self.text}  [{self.request}]" if self.request else self.text


@dataclass(eq=False)
class RequestRecord:
    method: str
    path: str  # after /api/v10, e.g. "/channels/1/messages"
    route: str  # the matched template, e.g. "POST /channels/{channel_id}/messages", or "unknown"
    params: dict[str, str]
    query: dict[str, str]
    authorization: str | None
    json: Any = None  # the JSON body, or the multipart payload_json
    files: list[UploadedFile] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)  # arrival
    done_at: float = 0.0
    status: int = 0
    response: Any = None
    pings: Pings | None = None  # for bodies that create or re-parse message content
    fault: Fault | None = None
    deduplicated: bool = False  # a resend with the same nonce and enforce_nonce
    interaction_response: InteractionResponse | None = None

    def id(self, name: str) -> int:
        value = self.params.get(name, "")
        if not value.isdigit():
            raise ApiError(
                404, 0, "404: Not Found", violation=f"{name}={value!r} is not a snowflake"
            )
        return int(value)

    @property
    def body(self) -> Json:
        """The message body: the JSON, or its ``data`` for interaction callbacks."""
        body = self.json if isinstance(self.json, dict) else {}
        return body.get("data") or {} if self.route.endswith("/callback") else body

    @property
    def allowed_mentions(self) -> Json | None:
        return self.body.get("allowed_mentions")

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"
