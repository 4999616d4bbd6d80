"""Product files state what holds now: no words about how the project is developed.

History (issue numbers, who worked on what, dated re-runs, "this version") belongs in
CHANGELOG.md; README, docs, code, benchmarks, scripts and notebooks say what holds now.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The product files: everything a user reads or runs (CHANGELOG.md and tests/ are not product).
PRODUCT = ("README.md", "docs", "icl_circuits", "probes", "benchmarks", "scripts", "notebooks")
SUFFIXES = {".md", ".py", ".ipynb", ".csv", ".txt", ".toml", ".json", ".cfg"}
#: Development words, as case-insensitive regular expressions.
WORDS = [
    r"\bissues?\s*#?\d+",  # issue numbers
    r"\b(the|this|its|an?|reproduction's) issue('s)?\b",
    r"(?<![\w&/#])#\d{1,4}\b(?![\w-])",  # "#25"
    r"\bagents?('s)?\b",
    r"\bhelper (agent|session|worker)s?\b",
    r"\b(this|that|second|third|fourth|fifth|previous|earlier|later|other|another|its|next) sessions?\b",
    r"\bsession notes\b",
    r"\b(until|before|since|after) this (version|change|session)\b",
    r"\bthis version\b",
    r"\bfinal code of\b",
    r"\bpreviously\b",
    r"\bthe old (preset|settings|claim|code)\b",
    r"\bre-?run on\b",
    r"\b20\d\d-\d\d-\d\d\b",  # dated runs
]
PATTERN = re.compile("|".join(f"(?:{w})" for w in WORDS), re.IGNORECASE)


def product_files() -> list[Path]:
    files = []
    for name in PRODUCT:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        else:
            files += [
                p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
            ]
    return sorted(files)


def test_the_pattern_finds_development_words():
    for text in (
        "see issue #25",
        "before a reproduction's issue is resolved",
        "Issue 15's runs",
        "fixed in #7.",
        "another agent's load",
        "the helper agent",
        "in its second session",
        "until this version",
        "on the final code of the run",
        "re-run on 2026-11-29",
        "as previously reported",
    ):
        assert PATTERN.search(text), text
    for text in ("a Ray session", "helper functions", "color #1f77b4", "step 1,500", "[link](#which-setting)"):
        assert not PATTERN.search(text), text


def test_product_files_have_no_development_words():
    hits = []
    for path in product_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = PATTERN.search(line)
            if m:
                hits.append(f"{path.relative_to(ROOT)}:{i}: {m.group(0)!r} in {line.strip()[:100]}")
    assert not hits, "development words in product files:\n" + "\n".join(hits)
