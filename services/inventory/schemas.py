from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: int = Field(ge=0, le=2**31 - 1)


class StockOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: str
    available: int
    reserved: int
