"""The dashboard's search box: Oban Web's syntax, parsed into values (never into SQL).

    queues:media,mail workers:myapp.Mailer tags:vip nodes:n1 priorities:0,1 ids:12,13
    args.user.id:7 meta.batch_id:abc

Terms are separated by spaces; each is `field:value[,value...]`, commas meaning OR, and
different fields (or different `args.`/`meta.` paths) combining with AND. A field given
twice ORs its values. Values may be double-quoted to hold spaces, commas or colons
(`meta.note:"a b, c"`, with `\\"` for a quote). Singular field names are accepted too
(`queue:`, `worker:`, `tag:`, `node:`, `priority:`, `id:`).

`parse_search` checks every value (a priority is 0-9, an id a positive integer, a path
segment non-empty) and raises `SearchError` naming the term; the engine turns a `Search`
into parameters of fixed statements, so no text typed here ever becomes SQL.

Example:
    search = parse_search("queues:media,mail args.user.id:7")
    search.queues  # ('media', 'mail')
    search.args    # (PathFilter(path=('user', 'id'), values=('7',)),)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: Fields holding plain values, and their singular spellings.
_PLAIN = {
    "queues": "queues", "queue": "queues",
    "workers": "workers", "worker": "workers",
    "tags": "tags", "tag": "tags",
    "nodes": "nodes", "node": "nodes",
    "priorities": "priorities", "priority": "priorities",
    "ids": "ids", "id": "ids",
}  # fmt: skip
_FIELDS = "queues, workers, tags, nodes, priorities, ids, args.<path>, meta.<path>"
#: Longest search accepted: a URL's worth. Anything longer is a paste gone wrong.
MAX_LENGTH = 2000
#: Most values in one search (each becomes an array element or a containment test).
MAX_VALUES = 100
#: Deepest args/meta path.
MAX_DEPTH = 8
#: Highest job priority (Oban's range is 0-9).
MAX_PRIORITY = 9


class SearchError(ValueError):
    """A search that cannot be parsed; the message names the term and what is wrong."""


@dataclass(frozen=True, slots=True)
class PathFilter:
    """Jobs whose args (or meta) hold one of `values` at `path`.

    A value that reads as a number, `true`, `false` or `null` also matches that JSON
    value: `args.user.id:7` finds `{"user": {"id": 7}}` and `{"user": {"id": "7"}}`.
    """

    path: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: each field's accepted values (empty: any), OR within a field,
    AND across fields."""

    queues: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    priorities: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    args: tuple[PathFilter, ...] = field(default=())
    meta: tuple[PathFilter, ...] = field(default=())

    @property
    def empty(self) -> bool:
        """True when the search accepts every job."""
        return not any(getattr(self, f.name) for f in fields(self))


def parse_search(text: str) -> Search:
    """Parse the search box's text (see the module's docstring); `""` is `Search()`."""
    if not isinstance(text, str):
        raise SearchError(f"search must be text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise SearchError(f"search is {len(text)} characters long; at most {MAX_LENGTH}")
    plain: dict[str, list[str]] = {}
    paths: dict[str, dict[tuple[str, ...], list[str]]] = {"args": {}, "meta": {}}
    count = 0
    for term in _terms(text):
        name, values = _split_term(term)
        count += len(values)
        if count > MAX_VALUES:
            raise SearchError(f"search has more than {MAX_VALUES} values")
        root, _, rest = name.partition(".")
        if root in paths and (rest or name != root):
            path = _path(term, root, rest)
            _extend(paths[root].setdefault(path, []), values)
        elif name in _PLAIN:
            _extend(plain.setdefault(_PLAIN[name], []), values)
        else:
            raise SearchError(f"search term {term!r}: unknown field {name!r} (use {_FIELDS})")
    return Search(
        queues=tuple(plain.get("queues", ())),
        workers=tuple(plain.get("workers", ())),
        tags=tuple(plain.get("tags", ())),
        nodes=tuple(plain.get("nodes", ())),
        priorities=tuple(_priority(v) for v in plain.get("priorities", ())),
        ids=tuple(_job_id(v) for v in plain.get("ids", ())),
        args=tuple(PathFilter(p, tuple(v)) for p, v in paths["args"].items()),
        meta=tuple(PathFilter(p, tuple(v)) for p, v in paths["meta"].items()),
    )


def format_search(search: Search) -> str:
    """The canonical text of `search` (what `parse_search` reads back to an equal one)."""
    parts = [
        f"{name}:{','.join(_quote(str(v)) for v in getattr(search, name))}"
        for name in ("queues", "workers", "tags", "nodes", "priorities", "ids")
        if getattr(search, name)
    ]
    for root in ("args", "meta"):
        for flt in getattr(search, root):
            parts.append(f"{root}.{'.'.join(flt.path)}:{','.join(map(_quote, flt.values))}")
    return " ".join(parts)


def _terms(text: str) -> list[str]:
    """Split on spaces outside double quotes."""
    terms: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch.isspace() and not quoted:
            if current:
                terms.append("".join(current))
                current = []
        else:
            current.append(ch)
    if quoted:
        raise SearchError(f"search {text!r}: a double quote is not closed")
    if current:
        terms.append("".join(current))
    return terms


def _split_term(term: str) -> tuple[str, list[str]]:
    """`field:v1,"v 2"` -> ("field", ["v1", "v 2"])."""
    name, colon, raw = term.partition(":")
    if not colon:
        raise SearchError(
            f"search term {term!r} has no field: write field:value (fields: {_FIELDS})"
        )
    if not name:
        raise SearchError(f"search term {term!r}: the field name is missing before ':'")
    values: list[str] = []
    current: list[str] = []
    quoted = escaped = was_quoted = False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
            was_quoted = True
        elif ch == "," and not quoted:
            values.append(_value(term, "".join(current), was_quoted))
            current, was_quoted = [], False
        else:
            current.append(ch)
    values.append(_value(term, "".join(current), was_quoted))
    return name.lower() if not name.startswith(("args.", "meta.")) else name, values


def _value(term: str, value: str, quoted: bool) -> str:
    if not value and not quoted:
        raise SearchError(f"search term {term!r} has an empty value")
    return value


def _path(term: str, root: str, rest: str) -> tuple[str, ...]:
    segments = tuple(rest.split("."))
    if not rest or any(not s for s in segments):
        raise SearchError(f"search term {term!r}: write {root}.<key>[.<key>...]:value")
    if len(segments) > MAX_DEPTH:
        raise SearchError(f"search term {term!r}: paths go at most {MAX_DEPTH} keys deep")
    return segments


def _extend(into: list[str], values: list[str]) -> None:
    into.extend(v for v in values if v not in into)


def _priority(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_PRIORITY:
        raise SearchError(f"search 'priorities:{value}': priorities are integers 0-{MAX_PRIORITY}")
    return int(value)


def _job_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 2**63:
        raise SearchError(f"search 'ids:{value}': ids are positive integers")
    return int(value)


def _quote(value: str) -> str:
    if value and not any(c in ',"\\' or c.isspace() for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
