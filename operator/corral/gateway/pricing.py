"""What tokens cost: the configured price table (USD per million tokens by model prefix)."""

from __future__ import annotations

from corral.config import ModelPrice
from corral.gateway.usage import TokenUsage

PER = 1_000_000
# Metric label of a model no price row names (label values stay a bounded set).
OTHER_MODEL = "other"


class PriceTable:
    def __init__(self, prices: list[ModelPrice]) -> None:
        # Longest prefix first, so "claude-opus-4-5" wins over "claude-opus-4".
        self.rows = sorted(prices, key=lambda row: len(row.model), reverse=True)
        self.fallback = (
            max(prices, key=lambda row: row.output + row.input + row.cache_write)
            if prices
            else ModelPrice(model=OTHER_MODEL, input=0, output=0, cache_read=0, cache_write=0)
        )

    def row(self, model: str | None) -> ModelPrice | None:
        for row in self.rows:
            if model and model.startswith(row.model):
                return row
        return None

    def label(self, model: str | None) -> str:
        """The model's metric label: its price row's name, or `other`."""
        row = self.row(model)
        return row.model if row else OTHER_MODEL

    def cost(self, model: str | None, usage: TokenUsage) -> float:
        """USD; an unknown model is charged at the table's highest price (budgets hold)."""
        row = self.row(model) or self.fallback
        return (
            usage.input_tokens * row.input
            + usage.output_tokens * row.output
            + usage.cache_read_input_tokens * row.cache_read
            + usage.cache_creation_input_tokens * row.cache_write
        ) / PER
