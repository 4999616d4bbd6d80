"""ICL, IWL and conflict prompts in natural language, built offline from the word lists.

Word lists (``icl_circuits/llm/data/``, CC0): made-up given names and countries with their
capitals. A fact is one sentence ``"{name} lives in {city}."`` and a query is
``"{name} lives in"``; the answer is the city. Splits:

* ``icl``: held-out names; the context holds the query's fact among distractor facts, so
  only the context has the answer.
* ``memorised``: the fine-tuning's trained names, context of other trained names' facts only;
  answerable only from the weights (what fine-tuning memorises).
* ``conflict``: trained names whose context states a *different* city than the trained one;
  ``acc`` counts the context's city (ICL wins), ``acc_memory`` the trained one (IWL wins).
* ``knowledge``: ``"The capital of {country} is"``, no context; pretrained in-weight
  knowledge, kept to the facts the base model knows (:func:`keep_known`, measured first).
* ``knowledge_conflict``: the same query after a context sentence naming another capital.

Every answer is scored against the same candidate list (all cities), so a split's chance
level is ``1 / len(candidates)``; :func:`single_token_words` keeps cities whose answer is
one token (checked per tokenizer), which makes each answer a single, well-defined candidate.
"""

from __future__ import annotations

import dataclasses
import random
from importlib import resources

SPLITS = ("icl", "memorised", "conflict", "knowledge", "knowledge_conflict")
TEMPLATE_WORDS = ["lives", "in", "The", "capital", "of", "is"]


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One scored prompt.

    Attributes:
        split: one of :data:`SPLITS` (or ``train``).
        text: the prompt; the answer follows it after a space.
        answer: the correct candidate.
        candidates: every candidate scored (the answer among them).
        memory: the in-weight answer where it differs from ``answer`` (conflict splits).
    """

    split: str
    text: str
    answer: str
    candidates: tuple[str, ...]
    memory: str | None = None


def _lines(name: str) -> list[str]:
    text = resources.files("icl_circuits.llm").joinpath("data").joinpath(name).read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_names() -> list[str]:
    """The made-up given names (``data/names.txt``)."""
    return _lines("names.txt")


def load_capitals() -> dict[str, str]:
    """Country -> capital (``data/capitals.tsv``)."""
    return dict(line.split("\t") for line in _lines("capitals.tsv"))


def vocabulary() -> list[str]:
    """Every word the prompts use (for the tiny test model's word tokenizer)."""
    caps = load_capitals()
    return sorted({*TEMPLATE_WORDS, *load_names(), *caps, *caps.values()})


def answer_tokens(tokenizer, text: str, answer: str) -> list[int]:
    """Token ids that ``" " + answer`` adds after ``text`` (checked to extend its tokens)."""
    base = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{text} {answer}", add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) == len(base):
        raise ValueError(f"answer {answer!r} does not extend the tokens of {text!r}")
    return full[len(base) :]


def single_token_words(tokenizer, words: list[str], context: str = "Brelvin lives in") -> list[str]:
    """The ``words`` that are one token after ``context``, with distinct ids (first kept)."""
    out, seen = [], set()
    for w in words:
        try:
            ids = answer_tokens(tokenizer, context, w)
        except ValueError:
            continue
        if len(ids) == 1 and ids[0] not in seen and ids[0] != tokenizer.unk_token_id:
            seen.add(ids[0])
            out.append(w)
    return out


def fact(name: str, city: str) -> str:
    return f"{name} lives in {city}."


def query(name: str) -> str:
    return f"{name} lives in"


def capital_query(country: str) -> str:
    return f"The capital of {country} is"


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """The fixed world of a study: candidate cities, trained and held-out names, known capitals.

    Attributes:
        cities: the candidate answers (single tokens for this tokenizer).
        trained: name -> city, the facts fine-tuning can memorise.
        heldout: names never trained on (for the ``icl`` split).
        capitals: country -> capital, restricted to capitals among ``cities``.
        n_facts: facts per context.
    """

    cities: tuple[str, ...]
    trained: dict[str, str]
    heldout: tuple[str, ...]
    capitals: dict[str, str]
    n_facts: int = 2

    @property
    def chance(self) -> float:
        return 1.0 / len(self.cities)


def build_taskset(tokenizer, n_trained: int = 32, n_facts: int = 2, seed: int = 0) -> TaskSet:
    """Draw the study's world: cities that are single tokens, trained/held-out names, capitals."""
    caps = load_capitals()
    cities = tuple(single_token_words(tokenizer, list(dict.fromkeys(caps.values()))))
    names = load_names()
    if len(cities) < n_facts + 2 or n_trained >= len(names) - n_facts:
        raise ValueError(f"build_taskset: {len(cities)} single-token cities and {len(names)} names are too few")
    rng = random.Random(seed)
    rng.shuffle(names)
    trained = {n: rng.choice(cities) for n in names[:n_trained]}
    capitals = {c: cap for c, cap in caps.items() if cap in cities}
    return TaskSet(cities, trained, tuple(names[n_trained:]), capitals, n_facts)


def _context(pairs: list[tuple[str, str]], rng: random.Random) -> str:
    pairs = list(pairs)
    rng.shuffle(pairs)
    return " ".join(fact(n, c) for n, c in pairs)


def _other(city: str, ts: TaskSet, rng: random.Random) -> str:
    return rng.choice([c for c in ts.cities if c != city])


def train_prompt(ts: TaskSet, p_relevant: float, rng: random.Random) -> Prompt:
    """A fine-tuning prompt: a trained name's query; its own fact in context with prob. ``p_relevant``."""
    names = list(ts.trained)
    q = rng.choice(names)
    others = rng.sample([n for n in names if n != q], ts.n_facts)
    shown = [q, *others[: ts.n_facts - 1]] if rng.random() < p_relevant else others
    text = _context([(n, ts.trained[n]) for n in shown], rng) + " " + query(q)
    return Prompt("train", text, ts.trained[q], ts.cities)


def icl_prompt(ts: TaskSet, rng: random.Random) -> Prompt:
    q, *others = rng.sample(list(ts.heldout), ts.n_facts)
    cities = rng.sample(list(ts.cities), ts.n_facts)
    text = _context(list(zip([q, *others], cities, strict=True)), rng) + " " + query(q)
    return Prompt("icl", text, cities[0], ts.cities)


def memorised_prompt(ts: TaskSet, q: str, rng: random.Random) -> Prompt:
    others = rng.sample([n for n in ts.trained if n != q], ts.n_facts)
    text = _context([(n, ts.trained[n]) for n in others], rng) + " " + query(q)
    return Prompt("memorised", text, ts.trained[q], ts.cities)


def conflict_prompt(ts: TaskSet, q: str, rng: random.Random) -> Prompt:
    stated = _other(ts.trained[q], ts, rng)
    others = rng.sample([n for n in ts.trained if n != q], ts.n_facts - 1)
    text = _context([(q, stated), *((n, ts.trained[n]) for n in others)], rng) + " " + query(q)
    return Prompt("conflict", text, stated, ts.cities, memory=ts.trained[q])


def knowledge_prompt(country: str, ts: TaskSet) -> Prompt:
    return Prompt("knowledge", capital_query(country), ts.capitals[country], ts.cities)


def knowledge_conflict_prompt(country: str, ts: TaskSet, rng: random.Random) -> Prompt:
    stated = _other(ts.capitals[country], ts, rng)
    text = f"{capital_query(country)} {stated}. {capital_query(country)}"
    return Prompt("knowledge_conflict", text, stated, ts.cities, memory=ts.capitals[country])


def eval_prompts(ts: TaskSet, n: int, seed: int = 1, known: list[str] | None = None) -> dict[str, list[Prompt]]:
    """Fixed evaluation prompts of every split (``n`` per split at most).

    Args:
        known: countries whose capital the base model knows (default: all); the knowledge
            splits use only these.
    """
    rng = random.Random(seed)
    trained = list(ts.trained)[:n]
    countries = [c for c in (known if known is not None else ts.capitals) if c in ts.capitals][:n]
    return {
        "icl": [icl_prompt(ts, rng) for _ in range(n)],
        "memorised": [memorised_prompt(ts, q, rng) for q in trained],
        "conflict": [conflict_prompt(ts, q, rng) for q in trained],
        "knowledge": [knowledge_prompt(c, ts) for c in countries],
        "knowledge_conflict": [knowledge_conflict_prompt(c, ts, rng) for c in countries],
    }
