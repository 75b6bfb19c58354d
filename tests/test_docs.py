"""The README and docs/ stay true: the README is short, the docs site builds with no broken link, the README's
Python runs, and every `lethe ...` command line shown in a code block parses with today's options.

Command lines are parsed, not run: they name the reader's files (forget10.jsonl, models/target); the same
commands run at smoke size in test_cli.py and test_byo.py."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_the_readme_is_short_and_links_only_to_files_that_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                         "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    assert {p.name for p in (REPO / "docs").glob("*.md")} == set(re.findall(r":\s*([\w-]+\.md)", nav))


def _command_lines(text: str):
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("lethe "):
            yield line


def test_every_lethe_command_shown_parses():
    from lethe.cli import build_parser

    shown = [(page.name, line) for page in PAGES for block in _blocks(page, "bash") for line in _command_lines(block)]
    assert len(shown) >= 10
    for page, line in shown:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{page}: `{line}` does not parse")


def test_every_python_block_compiles():
    for page in PAGES:
        for i, block in enumerate(_blocks(page, "python")):
            compile(block, f"{page.name} block {i + 1}", "exec")


def test_the_readme_python_example_runs(tmp_path):
    (code,) = _blocks(REPO / "README.md", "python")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = map(float, re.search(r"forget ROUGE ([\d.]+) -> ([\d.]+)", done.stdout).groups())
    assert after < before
