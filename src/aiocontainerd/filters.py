"""containerd's filter syntax, shared by every List in the project.

Grammar (containerd ``pkg/filters``)::

    filters   := each string is OR'd with the others; no strings matches all
    selectors := selector ("," selector)*          all must match (AND)
    selector  := fieldpath [operator value]        no operator: the field is present
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z][A-Za-z0-9_]*
    operator  := "==" | "!=" | "~="                "~=" is an RE2 regular expression search
    value     := quoted | [^\\s,]+
    quoted    := "…" (Go/JSON escapes) | `…` (raw) | '…'

Example: ``labels."io.kubernetes.pod.name"==web,runtime.name~=runc``.

Regular expressions are RE2 (``google-re2``), as Go's are: matching time is
linear in the input, so no filter can stall the event loop.

An *adaptor* maps a field path to the object's value, or ``None`` when the
object has no such field: ``lambda path: {"id": c.id}.get(path[0])``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidArgument

Adaptor = Callable[[Sequence[str]], "str | None"]
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_VALUE = re.compile(r"[^\s,]+")


@dataclasses.dataclass(frozen=True)
class Selector:
    """One ``fieldpath [op value]`` term."""

    fieldpath: tuple[str, ...]
    operator: str = ""
    value: str = ""
    regex: Any = None  # a compiled RE2 pattern

    def match(self, adaptor: Adaptor) -> bool:
        found = adaptor(self.fieldpath)
        if not self.operator:
            return found is not None
        if self.operator == "==":
            return found is not None and found == self.value
        if self.operator == "!=":
            return (found or "") != self.value
        assert self.regex is not None
        return self.regex.search(found or "") is not None


@dataclasses.dataclass(frozen=True)
class Filter:
    """Alternatives (OR) of conjunctions (AND) of selectors; empty matches everything."""

    alternatives: tuple[tuple[Selector, ...], ...] = ()

    def match(self, adaptor: Adaptor) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.match(adaptor) for s in conj) for conj in self.alternatives)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"filter {self.text!r}: {what} (at position {self.pos})")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def quoted(self) -> str | None:
        if self.pos >= len(self.text) or self.text[self.pos] not in "\"'`":
            return None
        quote = self.text[self.pos]
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" and quote != "`" else 1
        if end >= len(self.text):
            raise self.fail("unterminated quoted string")
        body = self.text[self.pos + 1:end]
        self.pos = end + 1
        if quote == "`":
            return body
        if quote == "'":
            body = body.replace('"', '\\"')
        try:
            return json.loads('"' + body + '"')
        except json.JSONDecodeError:
            raise self.fail("invalid escape in quoted string") from None

    def field(self) -> str:
        q = self.quoted()
        if q is not None:
            return q
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected field name")
        self.pos = m.end()
        return m.group()

    def selector(self) -> Selector:
        self.skip_space()
        path = [self.field()]
        while self.text.startswith(".", self.pos):
            self.pos += 1
            path.append(self.field())
        self.skip_space()
        op = self.text[self.pos:self.pos + 2]
        if op not in ("==", "!=", "~="):
            return Selector(tuple(path))
        self.pos += 2
        self.skip_space()
        value = self.quoted()
        if value is None:
            m = _VALUE.match(self.text, self.pos)
            if not m:
                raise self.fail("expected value")
            self.pos = m.end()
            value = m.group()
        regex = None
        if op == "~=":
            # imported here: RE2 (and libstdc++) cost ~3 MiB of resident memory in every
            # process, while only ``~=`` filters need it
            import re2

            options = re2.Options()
            options.log_errors = False
            try:
                regex = re2.compile(value, options)
            except re2.error as e:
                detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
                raise self.fail(f"invalid regular expression: {detail}") from None
        return Selector(tuple(path), op, value, regex)

    def parse(self) -> tuple[Selector, ...]:
        selectors = [self.selector()]
        self.skip_space()
        while self.pos < len(self.text):
            if self.text[self.pos] != ",":
                raise self.fail("expected ',' or end of filter")
            self.pos += 1
            selectors.append(self.selector())
            self.skip_space()
        return tuple(selectors)


def parse(filters: Iterable[str]) -> Filter:
    """Parse filter strings (OR'd). Raises :class:`InvalidArgument` on a syntax error."""
    alternatives = []
    for text in filters:
        if text == "":
            return Filter()  # an empty filter matches everything, as containerd's does
        alternatives.append(_Parser(text).parse())
    return Filter(tuple(alternatives))


def map_field(path: Sequence[str], mapping: Mapping[str, str]) -> str | None:
    """Adaptor helper for ``labels.<key>``-style paths: the rest of the path joined by dots."""
    if len(path) < 2:
        return None
    return mapping.get(".".join(path[1:]))
