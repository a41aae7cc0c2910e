"""Validation of a plugin's parameters (attribution methods, metrics) with errors users can act on."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

P = TypeVar("P", bound=BaseModel)


def validate_params(model: type[P], params: dict[str, Any], what: str) -> P:
    """``model(**params)``; else a ValueError naming ``what`` (e.g. ``attribution method 'lime'``):
    unknown parameters with the list of valid ones, or each invalid value with its field."""
    try:
        return model(**params)
    except ValidationError as exc:
        unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if unknown:
            valid = ", ".join(model.model_fields) or "(none)"
            raise ValueError(f"{what} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"valid parameters: {valid}") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e['input']!r})" for e in exc.errors())
        raise ValueError(f"{what}: invalid parameters: {problems}") from None
