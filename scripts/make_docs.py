"""Build the generated parts of ``docs/reproductions/`` (``make docs``).

A page marks each generated part with a pair of comments; everything between them is
rewritten, everything outside them is prose::

    <!-- make_docs: setup chan2024 -->
    ...
    <!-- /make_docs -->

The parts:

* ``setup NAME``: the setup table of reproduction NAME (parameter | paper | reference code |
  ours cpu | ours full). The rows above the rule come from the table in the docstring of the
  preset the reproduction trains; an override the reproduction applies fills the row of the
  same name. The rows below come from the reproduction's ``settings`` at the two scales.
* ``claims NAME``: the claims table of NAME's cpu run, ``docs/reproductions/claims/NAME.md``,
  a verbatim copy of the ``claims.md`` that ``icl-circuits reproduce NAME`` wrote.
* ``runtime NAME``: NAME's measured cpu run time (``docs/reproductions/run_times.csv``)
  and whether it fits the 30-minute budget on 2 cores.
* ``runtimes``: every reproduction's run time, as one table.
* ``verdicts``: the index's verdict table, ``docs/reproductions/verdicts.csv`` with each
  paper's run times from ``run_times.csv``.

Usage::

    python scripts/make_docs.py                         # rewrite the pages in place
    python scripts/make_docs.py --check                 # exit 1 if a page differs
    python scripts/make_docs.py --claims chan2024=reproductions/chan2024-cpu
                                                        # copy a cpu run's claims.md in first
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icl_circuits.errors import ConfigError  # noqa: E402
from icl_circuits.registry import presets, reproductions  # noqa: E402

DOCS = ROOT / "docs" / "reproductions"
CLAIMS = DOCS / "claims"
RUN_TIMES = DOCS / "run_times.csv"
VERDICTS = DOCS / "verdicts.csv"
#: The cpu scale's budget: a reproduction "fits" when its measured run time is at most this.
BUDGET_S = 30 * 60
BLOCK = re.compile(r"(<!-- make_docs: (\w+)(?: ([\w-]+))? -->\n)(.*?)(<!-- /make_docs -->)", re.S)
#: The sections of a run's config: an override ``train.steps=...`` fills the preset table's ``steps`` row.
CONFIG_SECTIONS = ("data", "model", "train")
_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


# --------------------------------------------------------------------------- preset tables
def _cell(text: str) -> str:
    """A docstring cell as Markdown: RST literals to backticks, pipes escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))
    return text.replace("|", "\\|") or "–"


def _rst_table(lines: list[str], start: int) -> list[list[str]]:
    """The RST simple table whose top rule is ``lines[start]``: header row first."""
    rule = lines[start]
    spans = [m.span() for m in re.finditer(r"=+", rule)]
    spans = [(a, spans[i + 1][0] if i + 1 < len(spans) else None) for i, (a, _) in enumerate(spans)]
    rows: list[list[str]] = []
    rules = 0
    for line in lines[start:]:
        if _RULE.match(line):
            rules += 1
            if rules == 3:
                break
            continue
        cells = [line[a:b].strip() if b else line[a:].strip() for a, b in spans]
        if rows and not cells[0] and rules == 2:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _md_table(lines: list[str], start: int) -> list[list[str]]:
    rows = []
    for line in lines[start:]:
        if not line.strip().startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not all(set(c) <= set("-: ") for c in cells):
            rows.append(cells)
    return rows


def preset_table(name: str) -> list[dict[str, str]]:
    """The rows of preset ``name``'s docstring table: keys parameter, paper, reference, ours."""
    doc = inspect.getdoc(presets()[name]) or ""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if _RULE.match(line) and i + 1 < len(lines) and lines[i + 1].split()[:1] == ["parameter"]:
            rows = _rst_table(lines, i)
            break
        if line.strip().startswith("| parameter |"):
            rows = _md_table(lines, i)
            break
    else:
        return []
    header = [h.lower() for h in rows[0]]
    keys = ["parameter" if h == "parameter" else h.split()[0] for h in header]
    out = []
    for row in rows[1:]:
        cells = dict(zip(keys, row, strict=True))
        out.append({k: _cell(cells.get(k, "")) for k in ("parameter", "paper", "reference", "ours")})
    return out


# --------------------------------------------------------------------------- settings
def _num(v: object, powers: bool = False) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if powers:
        return f"2^{int(math.log2(v))}"
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _powers_of_two(v: list | tuple) -> bool:
    """A grid written as 2^k: integers, every one a power of two, the largest at least 256."""
    ints = [x for x in v if isinstance(x, int) and not isinstance(x, bool) and x > 0]
    return len(ints) == len(v) > 1 and max(ints) >= 256 and all(x & (x - 1) == 0 for x in ints)


def _value(v: object) -> str:
    if isinstance(v, list | tuple):
        items = [_num(x, _powers_of_two(v)) for x in v]
        if len(items) > 6:
            return f"{items[0]}, {items[1]}, …, {items[-1]} ({len(items)} values)"
        return ", ".join(items) or "–"
    if isinstance(v, dict):
        return ", ".join(str(k) for k in v) or "–"
    return "–" if v is None else _num(v)


def _is_overrides(v: object) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, str) and "=" in x for x in v)


def _nested(v: object) -> bool:
    return isinstance(v, list | tuple) and any(isinstance(x, list | tuple | dict) for x in v)


def _flat(settings: dict) -> dict[str, str]:
    """``settings`` as label -> text: override lists split into their keys, dicts one level deep."""
    out: dict[str, str] = {}
    for key, v in settings.items():
        if _is_overrides(v):
            for item in v:
                k, _, val = item.partition("=")
                out[f"`{k}` ({key})" if key != "overrides" else f"`{k}`"] = _cell(val)
        elif isinstance(v, dict) and all(not isinstance(x, dict) and not _nested(x) for x in v.values()):
            for k, val in v.items():
                out[f"`{key}:{k}`"] = _cell(_value(val))
        elif isinstance(v, str) and "=" in v and " " not in v:
            k, _, val = v.partition("=")
            out[f"`{k}` ({key})"] = _cell(val)
        else:
            out[f"`{key}`"] = _cell(_value(v))
    return out


def _settings(module, scale: str) -> dict:
    fn = getattr(module, "settings", None) or getattr(module, "settings_for", None)
    if fn is None:
        raise ConfigError(f"{module.__name__}: no settings(scale) to build the setup table from")
    return fn(scale)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def setup_table(name: str) -> str:
    """The setup table of reproduction ``name`` (see the module docstring)."""
    module = reproductions()[name].load()
    cpu, full = _settings(module, "cpu"), _settings(module, "full")
    p_cpu = cpu.get("preset", getattr(module, "PRESET", None))
    p_full = full.get("preset", getattr(module, "PRESET", None))
    rows = preset_table(p_full) if p_full else []
    cpu_rows = {r["parameter"]: r["ours"] for r in preset_table(p_cpu)} if p_cpu else {}
    f_cpu, f_full = _flat(cpu), _flat(full)
    lines = ["| parameter | paper | reference code | ours cpu | ours full |", "| --- | --- | --- | --- | --- |"]
    used: set[str] = set()
    for r in rows:
        ours_cpu = r["ours"] if p_cpu == p_full else cpu_rows.get(r["parameter"], f"see `{p_cpu}`")
        ours_full = r["ours"]
        for label in f_cpu.keys() | f_full.keys():
            key = label.strip("`")
            if key.split(".")[0] in CONFIG_SECTIONS and _norm(key.split(".")[-1]) == _norm(r["parameter"]):
                used.add(label)
                ours_cpu = f"{f_cpu.get(label, ours_cpu)} ({label})"
                ours_full = f"{f_full.get(label, ours_full)} ({label})"
        lines.append(f"| {r['parameter']} | {r['paper']} | {r['reference']} | {ours_cpu} | {ours_full} |")
    if rows:
        lines.append(f"| *the reproduction's settings* | | | preset `{p_cpu}` | preset `{p_full}` |")
    for label in dict.fromkeys([*f_cpu, *f_full]):
        if label in used or label == "`preset`":
            continue
        if ":" in label and f_cpu.get(label) == f_full.get(label):
            continue  # a settings dict's entry: shown where the scales differ
        lines.append(f"| {label} | | | {f_cpu.get(label, '–')} | {f_full.get(label, '–')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run times
def run_times() -> dict[str, dict[str, str]]:
    """``run_times.csv`` as reproduction -> its row (seconds, conditions, how).

    An empty ``seconds`` marks a reproduction not yet run end to end at cpu scale: it has no run
    time and no claims table, and its pages say so instead of quoting either.
    """
    with RUN_TIMES.open(newline="") as f:
        return {row["reproduction"]: row for row in csv.DictReader(f)}


def unrun() -> set[str]:
    """The reproductions not yet run end to end at cpu scale (empty ``seconds``)."""
    return {name for name, row in run_times().items() if not row["seconds"].strip()}


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def runtime_line(name: str) -> str:
    row = run_times()[name]
    if name in unrun():
        return f"cpu run time: **not measured**, not yet run end to end ({row['conditions']}; {row['how']}).\n"
    s = float(row["seconds"])
    fits = "fits" if s <= BUDGET_S else "does **not** fit"
    return (
        f"cpu run time: **{_duration(s)}** ({row['conditions']}; {row['how']}); "
        f"it {fits} the cpu scale's budget of 30 min on 2 cores.\n"
    )


def runtime_table() -> str:
    lines = ["| reproduction | cpu run time | conditions | fits 30 min on 2 cores |", "| --- | --- | --- | --- |"]
    for name, row in run_times().items():
        if name in unrun():
            lines.append(f"| `{name}` | not measured | {row['conditions']} | unknown |")
            continue
        s = float(row["seconds"])
        lines.append(f"| `{name}` | {_duration(s)} | {row['conditions']} | {'yes' if s <= BUDGET_S else '**no**'} |")
    return "\n".join(lines) + "\n"


def verdict_table() -> str:
    """The verdict table: paper | what reproduces | what does not | cpu run time."""
    times = run_times()
    lines = ["| paper | what reproduces at cpu scale | what does not | cpu run time |", "| --- | --- | --- | --- |"]
    with VERDICTS.open(newline="") as f:
        for row in csv.DictReader(f):
            runs = []
            for name in row["reproductions"].split():
                if name in unrun():
                    runs.append(f"`{name}` not run end to end")
                    continue
                s = float(times[name]["seconds"])
                runs.append(f"`{name}` {_duration(s)}" + ("" if s <= BUDGET_S else " (over 30 min)"))
            cells = [f"[{row['paper']}]({row['page']})", row["reproduces"], row["does_not"], "; ".join(runs)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- pages
def claims_table(name: str) -> str:
    path = CLAIMS / f"{name}.md"
    if not path.exists() and name in unrun():
        return "No claims table: the reproduction has not been run end to end at cpu scale.\n"
    if not path.exists():
        raise ConfigError(f"{path.relative_to(ROOT)}: missing; copy the cpu run's claims.md there (--claims)")
    return path.read_text()


def block(kind: str, arg: str | None) -> str:
    makers = {"setup": setup_table, "claims": claims_table, "runtime": runtime_line}
    if kind == "runtimes":
        return runtime_table()
    if kind == "verdicts":
        return verdict_table()
    if kind not in makers or arg is None:
        raise ConfigError(f"make_docs block: expected setup/claims/runtime NAME or runtimes, got {kind} {arg}")
    return makers[kind](arg)


def render(text: str) -> str:
    """``text`` with every generated part rebuilt."""
    return BLOCK.sub(lambda m: m.group(1) + block(m.group(2), m.group(3)) + m.group(5), text)


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def copy_claims(spec: str) -> None:
    """``NAME=RUN_FOLDER``: copy the folder's claims.md (a cpu run of NAME) into ``CLAIMS``."""
    name, _, folder = spec.partition("=")
    summary = json.loads((Path(folder) / "summary.json").read_text())
    if summary.get("name") != name or summary.get("scale") != "cpu":
        raise ConfigError(
            f"--claims {spec}: summary.json is {summary.get('name')} at {summary.get('scale')}, not {name} at cpu"
        )
    CLAIMS.mkdir(parents=True, exist_ok=True)
    (CLAIMS / f"{name}.md").write_text((Path(folder) / "claims.md").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_docs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a page differs from what this script makes")
    p.add_argument("--claims", action="append", default=[], metavar="NAME=RUN_FOLDER")
    args = p.parse_args(argv)
    for spec in args.claims:
        copy_claims(spec)
    stale = []
    for page in pages():
        old = page.read_text()
        new = render(old)
        if new != old:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(f"stale: {', '.join(p.name for p in stale)}; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
