from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0, le=10**12)


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    price_cents: int
    in_stock: bool
