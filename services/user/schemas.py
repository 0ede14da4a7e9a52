from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# `email-validator` is not installed, so no EmailStr: a dot-atom local part, then a domain
# of one or more dot-separated labels (letters, digits, inner hyphens) under a TLD.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLD = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_TLD}")


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("value is not a valid email address")
    return value


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, max_length=254),
    AfterValidator(_email),
]
"""An e-mail address, normalised to lower case."""


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    email: Email
    password: Annotated[str, StringConstraints(min_length=8, max_length=128)] = Field(
        json_schema_extra={"writeOnly": True}
    )


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    email: str


class TokenOut(BaseModel):
    """OAuth2's token response (RFC 6749, 5.1)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    """Seconds until it expires."""


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    order_id: str
    type: str
    message: str
    created_at: datetime
