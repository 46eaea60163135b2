"""The dashboard's search syntax: what parses to what, what is refused and how."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kerrera.core.search import (
    MAX_LENGTH,
    MAX_VALUES,
    PathFilter,
    Search,
    SearchError,
    format_search,
    parse_search,
)


def test_the_full_example_parses_every_field() -> None:
    search = parse_search(
        "queues:media,mail workers:myapp.Mailer tags:vip nodes:n1 priorities:0,1 "
        "ids:12,13 args.user.id:7 meta.batch_id:abc"
    )
    assert search == Search(
        queues=("media", "mail"),
        workers=("myapp.Mailer",),
        tags=("vip",),
        nodes=("n1",),
        priorities=(0, 1),
        ids=(12, 13),
        args=(PathFilter(("user", "id"), ("7",)),),
        meta=(PathFilter(("batch_id",), ("abc",)),),
    )
    assert not search.empty


def test_empty_and_blank_searches_accept_everything() -> None:
    assert parse_search("") == Search()
    assert parse_search("   \t ").empty


def test_singular_names_repeats_and_duplicates() -> None:
    search = parse_search("queue:a queues:b,a worker:W id:5 priority:3")
    assert search.queues == ("a", "b")
    assert search.workers == ("W",)
    assert search.ids == (5,)
    assert search.priorities == (3,)


def test_field_names_ignore_case_but_paths_keep_it() -> None:
    search = parse_search("QUEUES:Media args.UserId:7")
    assert search.queues == ("Media",)
    assert search.args == (PathFilter(("UserId",), ("7",)),)


def test_paths_of_the_same_root_and_separate_paths() -> None:
    search = parse_search("args.a.b:1 args.a.b:2 args.c:x meta.k:v")
    assert search.args == (PathFilter(("a", "b"), ("1", "2")), PathFilter(("c",), ("x",)))
    assert search.meta == (PathFilter(("k",), ("v",)),)


def test_quoted_values_keep_spaces_commas_colons_and_quotes() -> None:
    search = parse_search(r'meta.note:"a b, c",plain args.url:"http://x:1" tags:"say \"hi\""')
    assert search.meta == (PathFilter(("note",), ("a b, c", "plain")),)
    assert search.args == (PathFilter(("url",), ("http://x:1",)),)
    assert search.tags == ('say "hi"',)


def test_an_unquoted_colon_belongs_to_the_value() -> None:
    assert parse_search("args.url:http://x").args == (PathFilter(("url",), ("http://x",)),)


def test_an_empty_quoted_value_is_a_value() -> None:
    assert parse_search('meta.note:""').meta == (PathFilter(("note",), ("",)),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mailer", "search term 'mailer' has no field"),
        ("queues:", "has an empty value"),
        ("queues:a,,b", "has an empty value"),
        (":x", "field name is missing"),
        ("zorg:1", "unknown field 'zorg'"),
        ("args:1", "unknown field 'args'"),
        ("args.:1", "write args.<key>"),
        ("meta.a..b:1", "write meta.<key>"),
        ("priorities:x", "priorities are integers 0-9"),
        ("priorities:10", "priorities are integers 0-9"),
        ("priorities:-1", "priorities are integers 0-9"),
        ("ids:0", "ids are positive integers"),
        ("ids:1e3", "ids are positive integers"),
        ("ids:²", "ids are positive integers"),
        ("ids:99999999999999999999", "ids are positive integers"),
        ('meta.a:"x', "double quote is not closed"),
        ("args." + ".".join("k" * 9) + ":1", "at most 8 keys deep"),
    ],
)
def test_bad_searches_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_search(text)


def test_limits_on_size() -> None:
    with pytest.raises(SearchError, match=f"at most {MAX_LENGTH}"):
        parse_search("queues:" + "a" * MAX_LENGTH)
    with pytest.raises(SearchError, match=f"more than {MAX_VALUES} values"):
        parse_search("ids:" + ",".join(str(i) for i in range(1, MAX_VALUES + 2)))


def test_not_text_is_refused() -> None:
    with pytest.raises(SearchError, match="must be text"):
        parse_search(7)  # type: ignore[arg-type]


def test_a_search_error_is_a_value_error() -> None:
    assert issubclass(SearchError, ValueError)


def test_sql_looking_input_is_only_a_value() -> None:
    search = parse_search("queues:x');DROP_TABLE_oban_jobs;--")
    assert search.queues == ("x');DROP_TABLE_oban_jobs;--",)


def test_format_is_canonical() -> None:
    text = 'queues:b,a args.user.id:7,"x y" ids:3 meta.k:v'
    assert format_search(parse_search(text)) == 'queues:b,a ids:3 args.user.id:7,"x y" meta.k:v'
    assert format_search(Search()) == ""


_word = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: s.strip() == s and s != "")
_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=6)


@given(
    queues=st.lists(_word, max_size=3, unique=True),
    tags=st.lists(_word, max_size=3, unique=True),
    priorities=st.lists(st.integers(0, 9), max_size=3, unique=True),
    ids=st.lists(st.integers(1, 2**62), max_size=3, unique=True),
    path=st.lists(_key, min_size=1, max_size=3),
    values=st.lists(_word, min_size=1, max_size=3, unique=True),
)
def test_format_then_parse_gives_the_same_search(
    queues: list[str],
    tags: list[str],
    priorities: list[int],
    ids: list[int],
    path: list[str],
    values: list[str],
) -> None:
    search = Search(
        queues=tuple(queues),
        tags=tuple(tags),
        priorities=tuple(priorities),
        ids=tuple(ids),
        args=(PathFilter(tuple(path), tuple(values)),),
    )
    assert parse_search(format_search(search)) == search
