"""The API's routers; each is built by a function taking its ports, so tests pass fakes."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from services.api.config import ApiLimits


def page_limit(limit: int | None, limits: ApiLimits) -> int:
    """The page size asked for, or the default; over the configured maximum is a 422."""
    if limit is None:
        return limits.default_page_size
    if limit > limits.max_page_size:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("query", "limit"),
                    "msg": f"Input should be less than or equal to {limits.max_page_size}",
                    "input": limit,
                    "ctx": {"le": limits.max_page_size},
                }
            ]
        )
    return limit
