"""SparseML's `eval(...)` values: arithmetic over recipe variables, evaluated from the syntax tree.

A recipe may define variables (`num_epochs: 10`, `pruning_end: eval(num_epochs - 2)`) and use them in any
field as `eval(EXPRESSION)`. Like SparseML's restricted evaluator, EXPRESSION may use numbers, variable
names, `+ - * / // % **`, unary minus and the functions abs, float, int, min, max, round; `eval(NAME)` of a
non-numeric variable (e.g. a mask type string) returns that value. Nothing else is allowed, and Python's
`eval` is never called.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable, Iterable, Mapping

EVAL_PATTERN = re.compile(r"^\s*eval\((?P<expression>.*)\)\s*$", re.DOTALL)

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "float": float, "int": int, "min": min, "max": max,
                                            "round": round}
MAX_EXPONENT = 64
UNDEFINED_HINT = "define it at the top of the recipe or pass it in recipe_args (CLI: --arg NAME=VALUE)"


class UndefinedVariable(Exception):
    """An expression names a variable that is not (yet) defined."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class BadExpression(Exception):
    """An expression uses syntax outside the allowed arithmetic, or fails to compute (e.g. 1/0)."""


def eval_expression(value: Any) -> str | None:
    """The EXPRESSION inside an `eval(EXPRESSION)` string, or None for any other value."""
    if not isinstance(value, str):
        return None
    match = EVAL_PATTERN.match(value)
    return match.group("expression") if match else None


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadExpression(f"{value!r} is not a number")
    return value


def _evaluate(node: ast.AST, variables: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in variables:
            raise UndefinedVariable(node.id)
        return _number(variables[node.id])
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, variables), _evaluate(node.right, variables)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise BadExpression(f"exponent {right} is too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, variables))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, variables) for arg in node.args))
    raise BadExpression(f"{ast.unparse(node)!r} is not allowed (numbers, variables, + - * / // % **, "
                        f"and {', '.join(_FUNCTIONS)} only)")


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Value of an eval() expression; a bare variable name returns the variable's value whatever its type.

    Raises UndefinedVariable (with `.name`) or BadExpression.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as error:
        raise BadExpression(f"not an arithmetic expression ({error.msg})") from None
    if isinstance(tree, ast.Name):
        if tree.id not in variables:
            raise UndefinedVariable(tree.id)
        return variables[tree.id]
    try:
        result = _evaluate(tree, variables)
    except (ArithmeticError, TypeError, ValueError) as error:
        raise BadExpression(str(error)) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise BadExpression(f"result {result} is not a finite number")
    return result


def referenced_names(expression: str) -> set[str]:
    """Variable names an expression mentions (empty for unparsable text)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id not in _FUNCTIONS}


def resolve_variables(definitions: Mapping[str, Any], outer: Mapping[str, Any],
                      on_error: Callable[[str, str], Exception]) -> dict[str, Any]:
    """Evaluate variable definitions that may refer to each other and to `outer` variables.

    `definitions` values are numbers, `eval(...)` strings or any other value (kept as is). Returns outer
    variables updated with the resolved definitions. `on_error(name, message)` builds the exception raised
    for an undefined name, a cycle or a bad expression.
    """
    resolved = dict(outer)
    pending = {}
    for name, value in definitions.items():
        if eval_expression(value) is None:
            resolved[name] = value
        else:
            pending[name] = eval_expression(value)
    while pending:
        progress = False
        for name, expression in list(pending.items()):
            try:
                resolved[name] = evaluate(expression, resolved)
            except UndefinedVariable as missing:
                if missing.name not in pending:
                    raise on_error(name, f"eval({expression}) uses undefined variable {missing.name!r}; "
                                         f"{UNDEFINED_HINT}") from None
                continue
            except BadExpression as error:
                raise on_error(name, f"eval({expression}): {error}") from None
            del pending[name]
            progress = True
        if not progress:
            names = ", ".join(sorted(pending))
            raise on_error(next(iter(pending)), f"variables {names} refer to each other in a cycle")
    return resolved


def all_expressions(value: Any) -> Iterable[str]:
    """Every eval() expression nested anywhere in a parsed YAML value, in document order. A container that
    YAML aliases share is visited once, so the walk is linear in the file's size (not in the expanded tree)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if hasattr(item, "args") and isinstance(item.args, dict):  # a !Modifier node
            item = item.args
        if isinstance(item, (dict, list)):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(reversed(list(item.values() if isinstance(item, dict) else item)))
        elif eval_expression(item) is not None:
            yield eval_expression(item)


__all__ = ["UNDEFINED_HINT", "UndefinedVariable", "BadExpression", "eval_expression", "evaluate", "referenced_names",
           "resolve_variables", "all_expressions"]
