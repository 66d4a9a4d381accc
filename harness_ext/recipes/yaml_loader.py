"""Read a recipe file safely: YAML (or Markdown front matter) with line numbers, `!Modifier` tags, no traps.

What this loader does beyond `yaml.safe_load`:
- `!GMPruningModifier`-style local tags become `TaggedModifier(name, args, line)`; every `!!python/...`
  tag is refused (safe_load semantics: nothing executes, nothing is imported).
- Mappings are `YamlMap` (a dict that knows its line and each key's line), sequences `YamlList`.
- A key repeated in one mapping is an error (PyYAML silently keeps the last one). Keys pulled in by a
  `<<: *anchor` merge may be overridden, as YAML intends.
- Numbers follow YAML 1.2, not 1.1: `2:4` stays the string "2:4" (YAML 1.1 reads the base-60 integer 124)
  and `1e-4` is the float 0.0001 (YAML 1.1 reads the string "1e-4").
- Markdown recipe cards: the YAML is the `---` ... `---` front matter, which may follow blank lines and
  HTML comments (licence headers); line numbers stay those of the file.
- Nesting is limited to MAX_NESTING levels (deeper, PyYAML's recursive composer dies of RecursionError
  after seconds).
- Aliases have a budget: a document whose aliases, expanded, would add more than ALIAS_EXPANSION_BUDGET
  nodes to the ones written (a "billion laughs" alias bomb: 1 KB that expands to billions of nodes), or
  whose alias refers to a node that contains it, is refused before anything walks it. The check visits each
  written node once, so it is linear in the file's size.

Grid specs (leaderboards/spec_parser.py) and command-line values (`parse_value`) are read by this loader too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from ..errors import UserError

INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"
MARKDOWN_SUFFIXES = (".md", ".markdown")
FRONT_MATTER_DELIMITERS = ("---", "+++")
ALIAS_EXPANSION_BUDGET = 100_000  # nodes that expanding one document's aliases may add to those written
MAX_NESTING = 100  # levels of lists / mappings inside each other (the composer and every walk recurse)
ALIAS_HINT = ("write the repeated parts out, or use fewer nested aliases (the limit protects every tool that "
              "walks the document)")


class AliasBombError(yaml.YAMLError):
    """A document whose aliases expand beyond ALIAS_EXPANSION_BUDGET, or into themselves (a cycle)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


RECIPE_HINT = "fix the recipe there (docs/recipes.md lists the formats, modifiers and fields)"


def recipe_error(path: str | Path, line: int | None, where: str | None, message: str) -> UserError:
    """UserError "FILE:LINE: WHERE: MESSAGE; what to do" (line and where optional).

    A message that says no more than what is wrong gets RECIPE_HINT as its what-to-do part.
    """
    location = f"{path}:{line}" if line else str(path)
    if "; " not in message:
        message = f"{message}; {RECIPE_HINT}"
    return UserError(f"{location}: {where}: {message}" if where else f"{location}: {message}")


class YamlMap(dict):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class YamlList(list):
    """A YAML sequence that remembers its own line and the line of each item (1-based)."""

    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []


@dataclass
class TaggedModifier:
    """A `!Name` node of a SparseML v1 recipe: the modifier's class name, its fields and its line."""

    name: str
    args: YamlMap = field(default_factory=YamlMap)
    line: int = 0


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def check_alias_expansion(root: yaml.Node, budget: int = ALIAS_EXPANSION_BUDGET) -> None:
    """Raise AliasBombError if expanding the aliases of the composed document `root` would add more than
    `budget` nodes, or never end (an alias inside the node it names). Aliases are shared node objects, so
    each node's expanded size is computed once (iteratively: no recursion limit): time linear in the file."""
    size: dict[int, int] = {}  # id(node) -> nodes in its expanded tree
    path: set[int] = set()  # nodes whose expansion is under way
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in _children(node))
        elif id(node) in path:
            raise AliasBombError("an alias refers to the node that contains it, which expands without end")
        elif id(node) not in size:
            path.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in size)
    expanded, written = size[id(root)], len(size)
    if expanded - written > budget:
        raise AliasBombError(f"expanding them gives {expanded:,} nodes from {written:,} written; at most "
                             f"{budget:,} more than written are allowed")


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers, line-aware containers, duplicate-key errors, `!Modifier` tags and
    the alias budget."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.MarkedYAMLError(problem=f"nested more than {MAX_NESTING} levels deep; flatten the "
                                           "structure", problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            check_alias_expansion(node)
        return node


# YAML 1.2 core-schema numbers: no base-60 ("2:4" is a string) and exponents without a dot ("1e-4").
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    INT_TAG, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0b[01_]+)$"), list("-+0123456789"))
_RecipeLoader.add_implicit_resolver(
    FLOAT_TAG,
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _check_duplicate_keys(loader: _RecipeLoader, node: MappingNode) -> None:
    first_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in first_lines:
            raise ConstructorError(None, None, f"duplicate key {key!r} (first at line {first_lines[key]}); YAML "
                                   "would silently keep only the last one: remove or rename one",
                                   key_node.start_mark)
        first_lines[key] = _line(key_node)


def _fill_map(loader: _RecipeLoader, node: MappingNode, data: YamlMap, deep: bool) -> None:
    _check_duplicate_keys(loader, node)
    loader.flatten_mapping(node)
    data.line = _line(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConstructorError(None, None, "a mapping key must be a plain value, not a list or mapping",
                                   key_node.start_mark) from None
        data[key] = loader.construct_object(value_node, deep=deep)
        data.key_lines[key] = _line(key_node)


def _construct_map(loader: _RecipeLoader, node: MappingNode):
    data = YamlMap()
    yield data
    _fill_map(loader, node, data, deep=False)


def _construct_list(loader: _RecipeLoader, node: SequenceNode):
    data = YamlList()
    data.line = _line(node)
    yield data
    data.extend(loader.construct_object(item, deep=False) for item in node.value)
    data.item_lines = [_line(item) for item in node.value]


def _construct_tagged(loader: _RecipeLoader, suffix: str, node: yaml.Node) -> TaggedModifier:
    args = YamlMap()
    args.line = _line(node)
    if isinstance(node, MappingNode):
        _fill_map(loader, node, args, deep=True)
    elif not (isinstance(node, ScalarNode) and node.value == ""):
        raise ConstructorError(None, None, f"!{suffix} must be followed by its fields (a mapping)",
                               node.start_mark)
    return TaggedModifier(name=suffix, args=args, line=_line(node))


def _refuse_python_tag(loader: _RecipeLoader, suffix: str, node: yaml.Node):
    raise ConstructorError(None, None, f"tag !!python/{suffix} refused: recipes are data, they cannot create "
                           "Python objects", node.start_mark)


_RecipeLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_RecipeLoader.add_constructor("tag:yaml.org,2002:seq", _construct_list)
_RecipeLoader.add_multi_constructor("!", _construct_tagged)
_RecipeLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python_tag)


def front_matter(text: str, path: str | Path) -> str:
    """The YAML front matter of a Markdown recipe card, padded with blank lines so line numbers still match.

    Blank lines and HTML comments (`<!-- ... -->`, e.g. a licence header) may precede the opening `---`.
    """
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped:
            index += 1
        elif stripped.startswith("<!--"):
            while index < len(lines) and "-->" not in lines[index]:
                index += 1
            index += 1
        else:
            break
    if index >= len(lines) or lines[index].strip() not in FRONT_MATTER_DELIMITERS:
        raise recipe_error(path, index + 1 if index < len(lines) else None, None,
                           "no YAML front matter: a Markdown recipe card must start with '---', the recipe, "
                           "and a closing '---' (blank lines and <!-- comments --> may come first)")
    start = index + 1
    for end in range(start, len(lines)):
        if lines[end].strip() in FRONT_MATTER_DELIMITERS:
            return "\n" * start + "".join(lines[start:end])
    raise recipe_error(path, index + 1, None, "the front matter opened here is never closed with '---'")


def load_yaml(path: str | Path, kind: str = "recipe") -> tuple[Any, bytes]:
    """(parsed document, raw file bytes) of a YAML / JSON file, or of a Markdown recipe card's front matter.

    `kind` names the file in messages ("recipe", "grid spec"). Raises UserError naming the file and line for
    unreadable files, YAML syntax errors, duplicate keys, refused tags, several YAML documents in one file,
    alias bombs (see ALIAS_EXPANSION_BUDGET) and nesting deeper than MAX_NESTING.
    """
    if str(path).startswith("zoo:"):
        raise UserError(f"{path}: SparseZoo stubs are not supported (SparseZoo is end-of-life); download the "
                        "recipe file and pass its path")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise UserError(f"cannot read {kind} {path}: {getattr(error, 'strerror', None) or error}; check the path") \
            from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise recipe_error(path, None, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() in MARKDOWN_SUFFIXES:
        text = front_matter(text, path)
    try:
        return yaml.load(text, Loader=_RecipeLoader), raw  # noqa: S506 - a SafeLoader subclass
    except AliasBombError as error:
        raise UserError(f"{path}: too many YAML aliases ({error.message}); {ALIAS_HINT}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = " ".join(filter(None, [error.context, error.problem]))
        if "expected a single document" in problem:
            problem = f"several YAML documents ('---' separators) in one {kind}; keep one"
        raise recipe_error(path, mark.line + 1 if mark else None, None, problem) from None
    except yaml.YAMLError as error:
        raise recipe_error(path, None, None, f"not valid YAML: {error}") from None


def parse_value(text: str) -> Any:
    """A command-line value read as a YAML 1.2 scalar: "0.5" -> 0.5, "10" -> 10, "2:4" -> "2:4"; text that is
    not valid YAML (or an alias bomb, or nested too deeply) stays the text it is."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text


__all__ = ["ALIAS_EXPANSION_BUDGET", "YamlMap", "YamlList", "TaggedModifier", "recipe_error", "front_matter",
           "check_alias_expansion", "load_yaml", "parse_value"]
