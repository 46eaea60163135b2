"""Every Python snippet of README.md and docs/*.md runs, for real, against the test database.

Each page runs in a subprocess of its own (this file is also the runner: `python
test_docs_snippets.py PAGE`), in a temporary folder, on a database of its own named by
`KERRERA_DATABASE_URL`, as a reader would paste the page into `python -m asyncio`:

- Python blocks run top to bottom in one namespace, so a block may use what an earlier
  block of the same page defined; top-level `await` runs on one event loop per page.
  `__main__` is a module without a file, as in that REPL.
- A block (of any language) whose first line is a comment naming a file, `# myapp/jobs.py`
  or `# pyproject.toml`, is written to that file instead; later blocks import it. Test
  files written so (`test_*.py`) are then run with pytest, on the same database.
- `<!-- snippet: skip REASON -->` just before a block skips it (keep these rare);
  `<!-- snippet: needs MODULE -->` runs it only when MODULE is installed.
- `<!-- snippets: django FOLDER SETTINGS -->` on a page runs it inside a copy of that
  Django project, set up as `manage.py shell` would.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>skip|needs)\s+(?P<arg>.+?)\s*-->\s*$")
COMMENT = re.compile(r"^\s*<!--.*-->\s*$")  # other comments may stand between a mark and its block
PAGE_MARK = re.compile(r"<!--\s*snippets:\s*django\s+(?P<folder>\S+)\s+(?P<settings>\S+)\s*-->")
FILE_LINE = re.compile(r"^#\s*(?P<path>[\w./-]+\.(?:py|toml|cfg|ini))\s*(?::.*)?$")
#: At most this many skipped blocks over all the pages: a skip is an untested snippet.
MAX_SKIPS = 3


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language and code, its marks."""

    page: Path
    line: int  # of the first code line, 1-based
    lang: str
    code: str
    skip: str | None = None
    needs: str | None = None

    @property
    def file(self) -> str | None:
        """The file this block is written to, when its first line names one."""
        first = self.code.lstrip("\n").splitlines()[0] if self.code.strip() else ""
        found = FILE_LINE.match(first)
        return found["path"] if found else None


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marks just before each."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    marks: dict[str, str] = {}
    index = 0
    while index < len(lines):
        mark, fence = MARK.match(lines[index]), FENCE.match(lines[index])
        if mark:
            marks[mark["kind"]] = mark["arg"]
        elif fence:
            indent, start = len(fence["indent"]), index + 1
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                index += 1
            body = "\n".join(line[indent:] for line in lines[start:index])
            found.append(
                Block(page, start + 1, fence["lang"], body, marks.get("skip"), marks.get("needs"))
            )
            marks = {}
        elif lines[index].strip() and not COMMENT.match(lines[index]):
            marks = {}  # a mark applies to the block right after it only
        index += 1
    return found


def python_blocks(page: Path) -> list[Block]:
    """The blocks of a page that run as Python (not the ones written as files)."""
    return [b for b in blocks_of(page) if b.lang == "python" and b.file is None]


# -- the runner, in the subprocess ------------------------------------------------------
def run_page(page: Path) -> int:
    """Run a page's snippets in the current folder; return the exit status."""
    django_mark = PAGE_MARK.search(page.read_text())
    if django_mark:
        _set_up_django(django_mark["folder"], django_mark["settings"])
    sys.path.insert(0, os.getcwd())
    main = types.ModuleType("__main__")  # a fileless __main__, like `python -m asyncio`
    sys.modules["__main__"] = main
    loop = asyncio.new_event_loop()
    tests: list[str] = []
    for block in blocks_of(page):
        where = f"{page.name}:{block.line}"
        if block.skip or (block.needs and importlib.util.find_spec(block.needs) is None):
            print(f"{where}: skipped ({block.skip or 'needs ' + block.needs})")
            continue
        if block.file is not None:
            target = Path(block.file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code.lstrip("\n") + "\n")
            if target.name.startswith("test_") and target.suffix == ".py":
                tests.append(block.file)
            continue
        if block.lang != "python":
            continue
        print(f"{where}: running", flush=True)
        started = time.perf_counter()
        # Blank lines first, so that a traceback names the page's own line numbers.
        source = "\n" * (block.line - 1) + block.code
        code = compile(source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            loop.run_until_complete(eval(code, main.__dict__))
        else:
            exec(code, main.__dict__)
        print(f"{where}: ran in {time.perf_counter() - started:.1f}s", flush=True)
    _close(loop)
    if tests:
        print(f"{page.name}: pytest {' '.join(tests)}", flush=True)
        env = {**os.environ, "KERRERA_TEST_DSN": os.environ["KERRERA_DATABASE_URL"]}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env
        )
        return done.returncode
    return 0


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """End what the snippets left running on the loop (a REPL session's pools, say)."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _set_up_django(folder: str, settings: str) -> None:
    shutil.copytree(ROOT / folder, os.getcwd(), dirs_exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    os.environ["DATABASE_URL"] = os.environ["KERRERA_DATABASE_URL"]
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()


# -- the tests ---------------------------------------------------------------------------


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


RUN_PAGES = [p for p in PAGES if any(b.lang == "python" for b in blocks_of(p))]
#: Seconds one page may take (its subprocess is killed then, and the page fails).
PAGE_TIMEOUT = 180


@dataclass
class PageRun:
    """A page's runner process, started with the others: they mostly wait (on the
    database, on jobs), so running them side by side keeps the whole test short."""

    page: Path
    database: str
    process: subprocess.Popen[str]

    def result(self) -> tuple[int, str]:
        try:
            out, _ = self.process.communicate(timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            return -1, f"{out}\n(killed after {PAGE_TIMEOUT}s)"
        return self.process.returncode, out


@pytest.fixture(scope="module")
def page_runs(
    kerrera_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, PageRun]]:
    """Every page's run, each in a folder and a database of its own (snippets use the
    default schema, `public`), all started at once."""
    runs: dict[str, PageRun] = {}
    with psycopg.connect(kerrera_dsn, autocommit=True) as conn:
        for page in RUN_PAGES:
            name = f"kerrera_docs_{uuid.uuid4().hex[:12]}"
            conn.execute(f'CREATE DATABASE "{name}"')
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
            env["KERRERA_DATABASE_URL"] = _with_database(kerrera_dsn, name)
            process = subprocess.Popen(
                [sys.executable, __file__, str(page)], cwd=tmp_path_factory.mktemp(page.stem),
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            runs[page.name] = PageRun(page, name, process)
    yield runs
    with psycopg.connect(kerrera_dsn, autocommit=True) as conn:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            if run.process.stdout is not None:  # (a run never read: close its pipe)
                run.process.stdout.close()
            conn.execute(f'DROP DATABASE IF EXISTS "{run.database}" WITH (FORCE)')


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_the_python_snippets_of_a_page_run(page: Path, page_runs: dict[str, PageRun]) -> None:
    status, out = page_runs[page.name].result()
    assert status == 0, f"{page.name}:\n{out}"


def test_snippets_name_nothing_undefined(tmp_path: Path) -> None:
    """What a page's Python blocks use is defined in them, an earlier block or an import."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    for page in RUN_PAGES:  # a page's blocks share a namespace; each file is a module
        blocks = [b for b in blocks_of(page) if b.lang == "python" and not b.skip]
        for number, block in enumerate(b for b in blocks if b.file is not None):
            (tmp_path / f"{page.stem}_file{number}.py").write_text(block.code.lstrip("\n"))
        session = "\n\n".join(b.code.lstrip("\n") for b in blocks if b.file is None)
        (tmp_path / f"{page.stem}.py").write_text(session + "\n")
    done = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--output-format", "concise",
         "--select", "F821", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout


def cli_synopsis() -> dict[tuple[str, ...], set[str]]:
    """The README's CLI synopsis: each `kerrera` command it shows, with the options it
    gives it (`pause|resume` stands for both commands; indented lines continue one)."""
    block = next(b for b in blocks_of(ROOT / "README.md") if b.code.startswith("kerrera "))
    commands: dict[tuple[str, ...], set[str]] = {}
    last: list[tuple[str, ...]] = []
    for line in block.code.splitlines():
        text = line.split("  #")[0]
        if not line.startswith(" "):
            last = []
        for part in text.split(";"):
            words = part.split()
            if words and words[0] == "kerrera":
                names = [w for w in words[1:3] if re.fullmatch(r"[a-z|]+", w)]
                last = [("kerrera", *alt) for alt in _alternatives(names)]
            for command in last:
                commands.setdefault(command, set()).update(re.findall(r"--[a-z][a-z-]+", part))
    return commands


def _alternatives(names: list[str]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [()]
    for name in names:
        found = [(*f, alt) for f in found for alt in name.split("|")]
    return found


def test_the_readme_cli_synopsis_matches_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command the README's synopsis shows exists, with every option shown."""
    from kerrera.cli import build_parser

    synopsis = cli_synopsis()
    assert ("kerrera", "jobs", "retry") in synopsis and ("kerrera", "top") in synopsis
    for command, options in synopsis.items():
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*command[1:], "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0, f"{' '.join(command)}: {out}"
        missing = sorted(o for o in options if o not in out)
        assert not missing, f"{' '.join(command)} --help does not know {missing}"


def test_skips_are_rare_and_say_why() -> None:
    skipped = [b for page in PAGES for b in blocks_of(page) if b.skip]
    assert len(skipped) <= MAX_SKIPS, [f"{b.page.name}:{b.line}" for b in skipped]
    assert all(len(b.skip or "") > 10 for b in skipped)


def test_the_extractor_reads_marks_files_and_indented_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- snippet: skip runs forever, shown for its options -->\n"
        "```python\nforever()\n```\n"
        "text between\n"
        "```python\n# myapp/jobs.py\nX = 1\n```\n"
        "- a list item:\n  ```python\n  from myapp.jobs import X\n  ```\n"
    )
    skipped, module, used = blocks_of(page)
    assert (skipped.skip, skipped.line, skipped.code) == (
        "runs forever, shown for its options", 3, "forever()",
    )  # fmt: skip
    assert (module.skip, module.file) == (None, "myapp/jobs.py")
    assert (used.code, used.file, used.line) == ("from myapp.jobs import X", None, 12)
    assert python_blocks(page) == [skipped, used]


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1])))
