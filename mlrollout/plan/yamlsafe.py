"""Safe YAML loading that remembers where every key and value came from.

PyYAML's composer builds a node graph (aliases share nodes, so composing is linear even for an
"alias bomb"); we then construct plain data ourselves with limits on the expanded size and depth,
refuse every tag that would construct an object, report duplicate keys, and record the
line/column of every key and value by its key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # a plan is a page of YAML; 1 MiB is generous
MAX_NODES = 50_000  # after alias expansion
MAX_DEPTH = 50

Path = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_MERGE = "tag:yaml.org,2002:merge"


class YamlProblem(Exception):
    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass
class Located:
    """Plain data plus where each piece came from (1-based line and column)."""

    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, int]] = field(default_factory=list)

    def mark(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The best location for ``path``: the key itself when ``key``, else the value; falls back
        to the nearest enclosing path that has one."""
        probe = tuple(path)
        while True:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]
            key = False


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, located: Located) -> None:
        self.located = located
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlProblem(
                f"the document expands to more than {MAX_NODES} values "
                "(too large, or aliases that multiply: an 'alias bomb')",
                *_pos(node),
            )
        if depth > MAX_DEPTH:
            raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep", *_pos(node))
        self.located.values.setdefault(path, _pos(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise YamlProblem(
                    f"the tag {node.tag!r} is not allowed in a plan (plain values only)",
                    *_pos(node),
                )
            return self.constructor.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise YamlProblem(f"the tag {node.tag!r} is not allowed in a plan", *_pos(node))
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise YamlProblem(f"the tag {node.tag!r} is not allowed in a plan", *_pos(node))
            return self._mapping(node, path, depth)
        raise YamlProblem("unsupported YAML node", *_pos(node))  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise YamlProblem("a merge key (<<) needs a mapping", *_pos(source))
                    for k, v in self._mapping(source, path, depth + 1).items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(
                    "a key must be a plain value, not a list or mapping", *_pos(key_node)
                )
            key = str(key_node.value)
            child = (*path, key)
            if key in result:
                self.located.duplicates.append((child, *_pos(key_node)))
            self.located.keys[child] = _pos(key_node)
            self.located.values[child] = _pos(value_node)
            result[key] = self.build(value_node, child, depth + 1)
        for k, v in merged.items():
            result.setdefault(k, v)
        return result


def load_located(text: str) -> Located:
    """Parse one YAML document into plain data with locations. Raises :class:`YamlProblem`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlProblem(
            f"the file is larger than {MAX_BYTES // 1024} KiB; a plan is much smaller"
        )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise YamlProblem(
            f"not valid YAML: {problem}",
            (mark.line + 1) if mark else 0,
            (mark.column + 1) if mark else 0,
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep") from None
    if node is None:
        raise YamlProblem("the file is empty: a plan starts with 'version: 1'", 1, 1)
    located = Located(data=None)
    try:
        located.data = _Builder(located).build(node, (), 0)
    except RecursionError:
        raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not a valid value: {exc}") from None
    return located
