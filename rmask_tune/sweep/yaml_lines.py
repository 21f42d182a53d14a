"""YAML reading that remembers where each value came from, for error messages that name a line."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from rmask_tune.errors import RmaskError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants a dot: ``1.0e-3``) and refuses a key
    given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> tuple[object, yaml.Node | None]:
    """The data in ``path`` and its node tree (None for an empty file); syntax errors are RmaskErrors."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RmaskError(f"search-space file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RmaskError(f"cannot read search-space file {path}: {error}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RmaskError(f"{where}: invalid YAML: {problem}") from None
    return data, node


def locate(node: yaml.Node | None, loc: tuple) -> tuple[int | None, tuple]:
    """The 1-based line of the value at ``loc`` (keys and list indices) and the part of ``loc`` found.

    Path elements that are not in the tree (for example the tag of a pydantic union) are skipped; a
    path that ends early gives the line of the deepest node reached.
    """
    if node is None:
        return None, ()
    line, found = node.start_mark.line + 1, []
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child, line = value, key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is not None:
            node = child
            found.append(part)
    return line, tuple(found)


def dotted(loc: tuple) -> str:
    """``('methods', 'lora', 'lr', 2)`` as ``methods.lora.lr[2]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
