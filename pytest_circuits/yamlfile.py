"""The one YAML loader of gate and task files: safe, line-numbered, guarded against alias bombs.

``load_yaml`` has ``yaml.safe_load``'s semantics (plain data only, no Python objects), except
that mappings come back as :class:`Node` and sequences as :class:`Items`, which remember the
line of every key and item, so a validator can say ``FILE:LINE: what is wrong``. A duplicate
key, a non-string key, a self-referencing alias or a document whose aliases expand to more than
:data:`MAX_EXPANDED_NODES` nodes is refused before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import CircuitsError

#: Nodes a document may expand to once every alias is followed. A hand-written gate or task file
#: has hundreds; a "billion laughs" document of nested aliases has exponentially many, and every
#: later walk over it (validation, hashing, JSON) would pay for each.
MAX_EXPANDED_NODES = 100_000


class YamlError(CircuitsError, ValueError):
    """A YAML document cannot be read; ``line`` is 1-based (None when unknown)."""

    def __init__(self, line: int | None, problem: str, fix: str) -> None:
        super().__init__(f"{line}: {problem}; {fix}" if line is not None else f"{problem}; {fix}")
        self.line = line
        self.problem = problem
        self.fix = fix


class Node(dict):
    """A YAML mapping with its line, each key's line and each value's line."""

    line: int
    lines: dict[str, int]  # key -> line of the key
    value_lines: dict[str, int]  # key -> line where the value starts (the key's when empty)


class Items(list):
    """A YAML sequence with its line and the line of each item."""

    line: int
    lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds :class:`Node`/:class:`Items` instead of dict/list."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)  # resolves "<<: *defaults" merge keys
    data = Node()
    data.line = _line(node)
    data.lines = {}
    data.value_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = _line(key_node)
        if not isinstance(key, str):
            raise YamlError(line, f"key {key!r} must be a string", "quote it or name the key")
        if key in data:
            raise YamlError(
                line, f"key {key!r} appears twice in this mapping (first on line "
                f"{data.lines[key]})", "keep one"
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line
        empty = isinstance(value_node, yaml.ScalarNode) and value_node.value == ""
        data.value_lines[key] = line if empty else _line(value_node)
    return data


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Items:
    data = Items(loader.construct_object(child, deep=True) for child in node.value)
    data.line = _line(node)
    data.lines = [_line(child) for child in node.value]
    return data


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` has once every alias is followed (shared nodes counted each time
    they are reached), computed in time linear in the composed graph."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlError(_line(node), "an alias refers to the anchor it is part of, so the "
                            "document would be infinite", "remove the self-reference")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                raise YamlError(
                    _line(root), f"the document expands to more than {MAX_EXPANDED_NODES} "
                    "values once its aliases (*name) are followed",
                    "write the values out or use fewer nested aliases",
                )
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml(text: str) -> Any:
    """Parse one YAML document safely; mappings are :class:`Node`, sequences :class:`Items`.

    None for an empty document. Raises :class:`YamlError` with the line of the problem.
    """
    try:  # the reader refuses control characters as soon as it is built
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise YamlError(_reader_line(text, exc), f"invalid YAML: {exc}",
                        "remove the control characters (is it a text file?)") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _expanded_size(root)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} started on line {exc.context_mark.line + 1})"
        raise YamlError(
            mark.line + 1 if mark is not None else 1,
            f"invalid YAML: {exc.problem or exc}{context}", "correct the syntax",
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(1, f"invalid YAML: {exc}", "correct the syntax") from None
    except RecursionError:
        raise YamlError(1, "the document nests too deeply to read",
                        "flatten the nesting") from None
    finally:
        loader.dispose()


def _reader_line(text: str, error: yaml.YAMLError) -> int:
    """The line of a reader error (it gives a character position, not a line)."""
    position = getattr(error, "position", None)
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
