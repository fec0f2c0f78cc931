"""The expr-lang subset: one case per rule that an Argo condition relies on."""

from __future__ import annotations

import math

import pytest
from r1ops.analysis.conditions import check_condition, environment, eval_condition, evaluate_result
from r1ops.analysis.expr import ExprError, UnsupportedExpression, evaluate
from r1ops.analysis.phases import Phase

VECTOR = [0.25, 0.5]


@pytest.mark.parametrize(
    ("expression", "result", "expected"),
    [
        ("result[0] < 0.3", VECTOR, True),  # a vector is a list of floats
        ("result < 0.3", 0.25, True),  # a scalar is a float
        ("result[-1] == 0.5", VECTOR, True),  # negative index counts from the end
        ("len(result) == 2", VECTOR, True),
        ("len(result) == 0 || result[0] < 1", [], True),  # || short-circuits: no index error
        ("all(result, {# < 1})", VECTOR, True),
        ("all(result, # < 0.3)", VECTOR, False),  # predicate without braces
        ("any(result, {# > 0.4})", VECTOR, True),
        ("none(result, {# > 1})", VECTOR, True),
        ("one(result, {# > 0.4})", VECTOR, True),
        ("count(result, {# > 0.1}) == 2", VECTOR, True),
        ("isNaN(result[0])", [math.nan], True),
        ("result[0] < 1", [math.nan], False),  # NaN compares false
        ("result[0] >= 1", [math.nan], False),
        ("isInf(result)", math.inf, True),
        ("default(7) == 7", None, True),
        ("default(7) == 0.5", 0.5, True),
        ("isNil()", None, True),
        ("asInt('42') + 1 == 43", None, True),
        ("asFloat('0.5') == 0.5", None, True),
        ("1 / 2 == 0.5", None, True),  # / is float division
        ("7 % 4 == 3", None, True),
        ("2 ** 3 == 8", None, True),
        ("-2 ** 2 == -4", None, True),  # ** binds tighter than unary minus
        ("1 == 1.0", None, True),  # numbers compare across int/float
        ("not (1 > 2) and !false", None, True),
        ("1 < 2 ? 'yes' : 'no'", None, "yes"),
        ("0.5 in result", VECTOR, True),
        ("0.7 not in result", VECTOR, True),
        ("sum(result) == 0.75 && max(result) == 0.5 && min(result) == 0.25", VECTOR, True),
        ("mean(result) == 0.375 && median(result) == 0.375", VECTOR, True),
        ("nil ?? 3", None, 3),
        ("1 + 2 * 3 == 7", None, True),
        ("(1 + 2) * 3 == 9", None, True),
        ("'a' + 'b' == \"ab\"", None, True),
        ("1e3 == 1000", None, True),
    ],
)
def test_expression(expression: str, result: object, expected: object) -> None:
    assert evaluate(expression, environment(result)) == expected


@pytest.mark.parametrize(
    ("expression", "result", "message"),
    [
        ("result < 0.3", VECTOR, "mismatched types array and float64"),  # vector used as a number
        ("result[0] < 1", [], "index out of range"),  # empty vector: no series
        ("result[2]", VECTOR, "index out of range"),
        ("isNaN(result)", VECTOR, "isNaN expects a float64"),
        ("asInt('x')", None, "invalid syntax"),
        ("unknown > 1", None, "unknown name unknown"),
        ("1 +", None, "unexpected"),
        ("result[0] <", VECTOR, "unexpected"),
        ("1 && true", None, "non-bool"),
        ("7.5 % 2", None, "mismatched types"),
        ("", None, "empty expression"),
        ("1 @ 2", None, "unexpected character"),
    ],
)
def test_expression_error(expression: str, result: object, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        evaluate(expression, environment(result))


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("result | filter(# > 1)", "pipe"),
        ("result?.x", "optional chaining"),
        ("1..3", "range"),
        ("'abc' matches 'a.*'", "matches"),
        ("{a: 1}", "map literals"),
        ("result[0:1]", "slices"),
        ("let x = 1; x", "let"),
        ("sprintf('%d', 1)", "sprintf"),
    ],
)
def test_unsupported_is_named(expression: str, named: str) -> None:
    with pytest.raises(UnsupportedExpression, match=named):
        evaluate(expression, environment([1.0]))


@pytest.mark.parametrize("condition", ["sprintf('%d', 1) == '1'", "all(result, {upper(#) == 1})"])
def test_unknown_function_is_refused_before_running(condition: str) -> None:
    with pytest.raises(UnsupportedExpression, match=r"function (sprintf|upper)\(\) is not supported"):
        check_condition(condition)


def test_known_functions_pass_the_check() -> None:
    check_condition(
        "len(result) == 1 && !isNaN(result[0]) && default(0) <= asFloat('1') && all(result, # > 0)"
    )


def test_no_python_eval_escape() -> None:
    with pytest.raises(ExprError):
        evaluate("__import__('os').system('true')", environment(None))


def test_condition_must_be_bool() -> None:
    with pytest.raises(ExprError, match="expected bool"):
        eval_condition(VECTOR, "result[0]")


# Argo's EvaluateResult: which phase a measurement gets from its two conditions.
@pytest.mark.parametrize(
    ("success", "failure", "value", "phase"),
    [
        ("", "", 1.0, Phase.SUCCESSFUL),  # no conditions: success
        ("result < 2", "", 1.0, Phase.SUCCESSFUL),
        ("result < 2", "", 3.0, Phase.FAILED),  # only success: not success is a failure
        ("", "result > 2", 1.0, Phase.SUCCESSFUL),  # only failure: not failure is a success
        ("", "result > 2", 3.0, Phase.FAILED),
        ("result < 1", "result > 2", 1.5, Phase.INCONCLUSIVE),  # neither holds
        ("result < 5", "result > 2", 3.0, Phase.FAILED),  # both hold: failure wins
        ("result < 1", "result > 2", math.nan, Phase.INCONCLUSIVE),  # NaN: neither
    ],
)
def test_evaluate_result(success: str, failure: str, value: float, phase: Phase) -> None:
    assert evaluate_result(value, success, failure) == phase
