"""What tokens cost: the configured price table (USD per million tokens by model prefix)."""

from __future__ import annotations

import re

from corral.config import ModelPrice
from corral.gateway.usage import TokenUsage

PER = 1_000_000
# Metric label of a model no price row names (label values stay a bounded set).
OTHER_MODEL = "other"
# What a call without max_tokens may write (beyond any model's limit today), and the most
# a stated max_tokens is taken for.
DEFAULT_MAX_TOKENS = 64_000
MAX_TOKENS_TAKEN = 1_000_000
# Keys, not values: inside a JSON string a quote is escaped, so these match keys only (of
# the request or of an object nested in it, which is why the dearest match is taken).
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d{1,9})')
_MODEL = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9._:@/-]{1,128})"')


class PriceTable:
    def __init__(self, prices: list[ModelPrice], web_search_usd_per_1000: float = 0.0) -> None:
        self.web_search_usd = web_search_usd_per_1000 / 1000
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
        _, output_factor = row.factors(usage.prompt_tokens)
        output = usage.output_tokens * row.output * output_factor / PER
        return (
            self.prompt_cost(model, usage)
            + output
            + usage.web_search_requests * self.web_search_usd
        )

    def prompt_cost(self, model: str | None, usage: TokenUsage) -> float:
        """USD of the call's input alone: uncached, cache reads and cache writes."""
        row = self.row(model) or self.fallback
        # The hour's writes as stated; the rest of the writes at the 5-minute rate (should
        # the two counts disagree, the dearer reading is taken).
        hour_writes = usage.cache_creation_1h_input_tokens
        five_minute_writes = max(usage.cache_creation_input_tokens - hour_writes, 0)
        input_factor, _ = row.factors(usage.prompt_tokens)
        prompt = (
            usage.input_tokens * row.input
            + usage.cache_read_input_tokens * row.cache_read
            + five_minute_writes * row.cache_write
            + hour_writes * row.hour_cache_write
        )
        return prompt * input_factor / PER

    def call_reserve(self, body: bytes) -> float:
        """The most a Messages API call with request `body` can cost in output: its
        max_tokens at its model's output price (with its long-prompt premium, if it has
        one). Read without parsing the body (it can be megabytes): of every `max_tokens` and
        `model` key in it, the dearest is taken, so nothing the caller nests in its request
        makes the reserve smaller."""
        tokens = max((int(m) for m in _MAX_TOKENS.findall(body)), default=DEFAULT_MAX_TOKENS)
        models = {m.decode() for m in _MODEL.findall(body)} or {None}
        price = max((self.row(m) or self.fallback).dearest_output for m in models)
        return min(tokens, MAX_TOKENS_TAKEN) * price / PER
