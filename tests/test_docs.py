"""The design lives in the repository: code and docs cite only documents that are in it."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import REPO_ROOT

CHECKED = ("storage", "cache_builder", "distill", "evaluate", "demo", "bench", "tests", "scripts", "docs")
CITED_DOC = re.compile(r"\bdocs/([\w-]+\.md)")
OUTSIDE = re.compile(r"DESIGN\.md|\bshared/reference\b")


def repo_texts() -> list[tuple[str, str]]:
    """``(relative path, text)`` of every source, script and Markdown file checked, plus README.md."""
    out = [("README.md", open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read())]
    for top in CHECKED:
        for dirpath, dirnames, files in os.walk(os.path.join(REPO_ROOT, top)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            for f in sorted(files):
                if f.endswith((".py", ".md", ".sh")):
                    path = os.path.join(dirpath, f)
                    out.append((os.path.relpath(path, REPO_ROOT), open(path, encoding="utf-8").read()))
    return out


def test_nothing_cites_documents_outside_the_repository() -> None:
    me = os.path.relpath(__file__, REPO_ROOT)
    bad = [f"{path}:{text[:m.start()].count(chr(10)) + 1}" for path, text in repo_texts() if path != me
           for m in OUTSIDE.finditer(text)]
    assert not bad, "cite docs/*.md instead of documents outside the repository: " + ", ".join(bad)


@pytest.mark.parametrize("doc", ["architecture.md", "cache.md", "distill.md", "evaluate.md"])
def test_stage_docs_exist(doc: str) -> None:
    assert os.path.isfile(os.path.join(REPO_ROOT, "docs", doc))


def test_every_cited_doc_exists() -> None:
    missing = sorted({f"{path} cites docs/{name}" for path, text in repo_texts() for name in CITED_DOC.findall(text)
                      if not os.path.isfile(os.path.join(REPO_ROOT, "docs", name))})
    assert not missing, "; ".join(missing)
