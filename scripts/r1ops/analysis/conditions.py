"""successCondition / failureCondition -> a measurement phase, as Argo's utils/evaluate does it."""

from __future__ import annotations

import math
from typing import Any

from r1ops.analysis.expr import (
    BUILTINS,
    PREDICATES,
    ExprError,
    UnsupportedExpression,
    called_functions,
    evaluate,
    parse,
)
from r1ops.analysis.phases import Phase


def _as_int(s: Any) -> int:
    if not isinstance(s, str):
        raise ExprError(f"asInt expects a string, got {type(s).__name__}")
    try:
        return int(s, 10)
    except ValueError:
        raise ExprError(f'asInt: strconv.ParseInt: parsing "{s}": invalid syntax') from None


def _as_float(s: Any) -> float:
    if not isinstance(s, str):
        raise ExprError(f"asFloat expects a string, got {type(s).__name__}")
    try:
        return float(s)
    except ValueError:
        raise ExprError(f'asFloat: strconv.ParseFloat: parsing "{s}": invalid syntax') from None


def _float_arg(fn: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ExprError(f"{fn} expects a float64, got {type(x).__name__} (use result[0] for a vector)")
    return float(x)


def environment(result: Any) -> dict[str, Any]:
    """The names Argo puts in scope of a condition: the result and its helper functions."""
    return {
        "result": result,
        "asInt": _as_int,
        "asFloat": _as_float,
        "isNaN": lambda x: math.isnan(_float_arg("isNaN", x)),
        "isInf": lambda x: math.isinf(_float_arg("isInf", x)),
        "isNil": lambda: result is None,
        "default": lambda fallback: fallback if result is None else result,
    }


def check_condition(condition: str) -> None:
    """Parse a condition and refuse functions that neither expr nor Argo provides."""
    unknown = called_functions(parse(condition)) - set(BUILTINS) - PREDICATES - set(environment(None))
    if unknown:
        raise UnsupportedExpression(
            f"function {', '.join(sorted(unknown))}() is not supported (in {condition!r})"
        )


def eval_condition(result: Any, condition: str) -> bool:
    out = evaluate(parse(condition), environment(result))
    if not isinstance(out, bool):
        raise ExprError(f"expected bool, but got {type(out).__name__} from {condition!r}")
    return out


def evaluate_result(result: Any, success: str, failure: str) -> Phase:
    """Argo's EvaluateResult. Raises ExprError (-> measurement Error) if a condition fails to run."""
    ok = eval_condition(result, success) if success else False
    bad = eval_condition(result, failure) if failure else False
    if not success and not failure:
        return Phase.SUCCESSFUL  # no conditions: any value that arrived is a success
    if success and not failure:
        bad = not ok
    elif failure and not success:
        ok = not bad
    if bad:
        return Phase.FAILED  # failure wins when both hold
    if not ok:
        return Phase.INCONCLUSIVE
    return Phase.SUCCESSFUL
