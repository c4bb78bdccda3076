"""The demo's translation task: English -> Spanish pairs from a rule-based generator, no download needed.

Three kinds of short, lowercase sentences, each at most ~12 words:
  number   "three hundred twenty-one"   -> "trescientos veintiuno"        (0 .. 999,999 by default)
  date     "march 5, 1999"              -> "cinco de marzo de mil novecientos noventa y nueve"
  phrase   "we need twenty-one chairs"  -> "necesitamos veintiuna sillas"  (gender agreement of the number)
The task needs real structure (Spanish reorders nothing here, but merges "twenty-one" into "veintiuno",
drops "un" from "mil", makes "cien" "ciento" before more digits, agrees in gender), yet a small transformer
learns it in minutes. Splits are decided by a hash of the source string alone, so an example held out for
validation or test is never generated into training, whatever the seed or sizes.

Spanish rules used (RAE, Diccionario panhispánico de dudas): "uno" shortens to "un" before a masculine noun
and before "mil"/"millón" ("veintiún mil"), becomes "una" before a feminine noun; hundreds agree in gender
("doscientas casas"); 100 is "cien", 101..199 "ciento ..."; 16..29 are single words with accents where
stress needs them (dieciséis, veintidós, veintitrés, veintiséis, veintiún). Day 1 of a month is "primero".
"""
from __future__ import annotations

import calendar
import hashlib
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from qkv.data._files import PathLike

Pair = tuple[str, str]

# -- English --------------------------------------------------------------------------------------------
_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _en_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{_EN_ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else ""))
    elif rest:
        words.append(_EN_ONES[rest])
    return " ".join(words)


def english_number(n: int) -> str:
    """0 <= n < 10**9 in American English words, no "and": 321 -> "three hundred twenty-one"."""
    _check_range(n)
    if n == 0:
        return "zero"
    millions, rest = divmod(n, 10**6)
    thousands, units = divmod(rest, 1000)
    words = [f"{_en_below_1000(millions)} million"] if millions else []
    words += [f"{_en_below_1000(thousands)} thousand"] if thousands else []
    words += [_en_below_1000(units)] if units else []
    return " ".join(words)


# -- Spanish --------------------------------------------------------------------------------------------
_ES_UNITS = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince "
             "dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro "
             "veinticinco veintiséis veintisiete veintiocho veintinueve").split()
_ES_TENS = {3: "treinta", 4: "cuarenta", 5: "cincuenta", 6: "sesenta", 7: "setenta", 8: "ochenta", 9: "noventa"}
_ES_HUNDREDS = ("", "ciento", "doscientos", "trescientos", "cuatrocientos", "quinientos", "seiscientos",
                "setecientos", "ochocientos", "novecientos")
# How a final "uno" is written: alone, before a masculine noun or mil/millón, before a feminine noun.
_UNO = {"uno": ("uno", "veintiuno"), "un": ("un", "veintiún"), "una": ("una", "veintiuna")}


def _es_below_100(n: int, form: str) -> str:
    if n == 1:
        return _UNO[form][0]
    if n == 21:
        return _UNO[form][1]
    if n < 30:
        return _ES_UNITS[n]
    tens, ones = divmod(n, 10)
    return _ES_TENS[tens] + (f" y {_es_below_100(ones, form)}" if ones else "")


def _es_below_1000(n: int, form: str, feminine: bool | None = None) -> str:
    """n in 1..999; hundreds agree with a feminine noun (doscientas), which `feminine` can set apart from form."""
    feminine = form == "una" if feminine is None else feminine
    if n == 100:
        return "cien"
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        word = _ES_HUNDREDS[hundreds]
        words.append(word[:-2] + "as" if feminine and hundreds > 1 else word)  # doscientas casas
    if rest:
        words.append(_es_below_100(rest, form))
    return " ".join(words)


def spanish_number(n: int, form: str = "uno") -> str:
    """0 <= n < 10**9 in Spanish words.

    form: "uno" (counting: 21 -> "veintiuno"), "un" (before a masculine noun: "veintiún gatos"),
    "una" (before a feminine noun: "veintiuna casas", "doscientas casas").
    """
    _check_range(n)
    if form not in _UNO:
        raise ValueError(f"form={form!r}: expected one of {list(_UNO)}")
    if n == 0:
        return "cero"
    millions, rest = divmod(n, 10**6)
    thousands, units = divmod(rest, 1000)
    words = []
    if millions:
        words.append("un millón" if millions == 1 else f"{_es_below_1000(millions, 'un')} millones")
    if thousands:
        # "mil", never "un mil"; units before mil shorten (veintiún mil), hundreds agree (doscientas mil casas).
        words.append("mil" if thousands == 1 else f"{_es_below_1000(thousands, 'un', form == 'una')} mil")
    if units:
        words.append(_es_below_1000(units, form))
    return " ".join(words)


def _check_range(n: int) -> None:
    if not isinstance(n, int) or not 0 <= n < 10**9:
        raise ValueError(f"n={n!r}: expected an int in [0, 10**9)")


# -- dates and phrases ----------------------------------------------------------------------------------
_MONTHS = tuple(zip(
    "january february march april may june july august september october november december".split(),
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split()))


def date_pair(year: int, month: int, day: int) -> Pair:
    """(english, spanish): (1999, 3, 5) -> ("march 5, 1999", "cinco de marzo de mil novecientos noventa y nueve")."""
    en_month, es_month = _MONTHS[month - 1]
    es_day = "primero" if day == 1 else spanish_number(day)
    return f"{en_month} {day}, {year}", f"{es_day} de {es_month} de {spanish_number(year)}"


# (english singular, english plural, spanish singular, spanish plural, gender)
_NOUNS = [tuple(n.split()) for n in (
    "cat cats gato gatos m", "dog dogs perro perros m", "house houses casa casas f", "book books libro libros m",
    "apple apples manzana manzanas f", "car cars coche coches m", "table tables mesa mesas f",
    "bird birds pájaro pájaros m", "flower flowers flor flores f", "tree trees árbol árboles m",
    "city cities ciudad ciudades f", "window windows ventana ventanas f", "chair chairs silla sillas f",
    "friend friends amigo amigos m", "key keys llave llaves f", "letter letters carta cartas f",
    "horse horses caballo caballos m", "egg eggs huevo huevos m", "bottle bottles botella botellas f",
    "child children niño niños m", "woman women mujer mujeres f", "man men hombre hombres m",
    "fish fish pez peces m", "mouse mice ratón ratones m", "person people persona personas f")]
# (english subject + verb, spanish verb form, or the same for the singular when they differ)
_SUBJECTS = [("i have", "tengo"), ("you have", "tienes"), ("he has", "él tiene"), ("she has", "ella tiene"),
             ("we have", "tenemos"), ("they have", "tienen"), ("i see", "veo"), ("we see", "vemos"),
             ("i want", "quiero"), ("we need", "necesitamos"), ("i bought", "compré"),
             ("there are", "hay")]


def phrase_pair(subject: int, count: int, noun: int) -> Pair:
    """(english, spanish) for `_SUBJECTS[subject]` + count + `_NOUNS[noun]`; count in 1..999."""
    en_subj, es_verb = _SUBJECTS[subject]
    en_sg, en_pl, es_sg, es_pl, gender = _NOUNS[noun]
    if count == 1 and en_subj == "there are":
        en_subj = "there is"
    number = spanish_number(count, "una" if gender == "f" else "un")
    return (f"{en_subj} {english_number(count)} {en_sg if count == 1 else en_pl}",
            f"{es_verb} {number} {es_sg if count == 1 else es_pl}")


def _digits_biased(rng: random.Random, max_digits: int) -> int:
    """A number whose digit count is uniform in 1..max_digits: small numbers are as common as large ones."""
    d = rng.randint(1, max_digits)
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


KINDS = ("number", "date", "phrase")
_EN_NUMBER_WORDS = frozenset(_EN_ONES + [t for t in _EN_TENS if t] + ["hundred", "thousand", "million"])
_EN_MONTHS = frozenset(m for m, _ in _MONTHS)


def kind_of(source: str) -> str | None:
    """The kind ("number", "date" or "phrase") of a source sentence this task makes, None for any other text
    (a user's own sentence): how the demo reports its accuracy per kind."""
    words = source.replace("-", " ").split()
    if words and all(w in _EN_NUMBER_WORDS for w in words):
        return "number"
    if len(words) == 3 and words[0] in _EN_MONTHS and words[1][:-1].isdigit() and words[2].isdigit():
        return "date"
    subjects = {en for en, _ in _SUBJECTS} | {"there is"}
    if any(source.startswith(s + " ") for s in subjects):
        return "phrase"
    return None


def iter_pairs(seed: int = 0, *, weights: Sequence[float] = (0.5, 0.25, 0.25), max_digits: int = 6,
               years: tuple[int, int] = (1800, 2099)) -> Iterator[Pair]:
    """An endless stream of (english, spanish) pairs, each source at most once, in an order fixed by seed.

    weights: relative frequency of the KINDS ("number", "date", "phrase").
    """
    if len(weights) != len(KINDS) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights={list(weights)}: expected {len(KINDS)} non-negative numbers for {KINDS}")
    if not 1 <= max_digits <= 9:
        raise ValueError(f"max_digits={max_digits!r}: expected 1..9")
    rng, seen = random.Random(seed), set()
    while True:
        kind = rng.choices(KINDS, weights)[0]
        if kind == "number":
            n = _digits_biased(rng, max_digits)
            pair = english_number(n), spanish_number(n)
        elif kind == "date":
            y, m = rng.randint(*years), rng.randint(1, 12)
            pair = date_pair(y, m, rng.randint(1, calendar.monthrange(y, m)[1]))
        else:
            count = max(1, _digits_biased(rng, 3))
            pair = phrase_pair(rng.randrange(len(_SUBJECTS)), count, rng.randrange(len(_NOUNS)))
        if pair[0] not in seen:
            seen.add(pair[0])
            yield pair


def generate_pairs(n: int, seed: int = 0, **kwargs) -> list[Pair]:
    """The first n pairs of `iter_pairs(seed, **kwargs)`: n distinct sources."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: expected a non-negative int")
    stream = iter_pairs(seed, **kwargs)
    return [next(stream) for _ in range(n)]


def split_of(source: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """"train", "val" or "test", from a hash of the source string alone (stable across runs and seeds)."""
    u = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def generate_splits(train: int = 20000, val: int = 500, test: int = 500, seed: int = 0,
                    **kwargs) -> dict[str, list[Pair]]:
    """Disjoint train/val/test lists of the requested sizes.

    Pairs are drawn from `iter_pairs(seed, **kwargs)` and routed by `split_of` with fixed fractions, so
    a source that lands in val or test for one call can never be in train for another call.
    """
    sizes = {"train": train, "val": val, "test": test}
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"{name}={size!r}: expected a non-negative int")
    out: dict[str, list[Pair]] = {k: [] for k in sizes}
    for pair in iter_pairs(seed, **kwargs):
        if all(len(out[k]) >= sizes[k] for k in sizes):
            break
        bucket = out[split_of(pair[0])]
        if len(bucket) < sizes[split_of(pair[0])]:
            bucket.append(pair)
    return out


def fresh_numbers(n: int, exclude: Iterable[str] = (), *, seed: int = 1, max_digits: int = 6,
                  uniform: bool = False) -> list[Pair]:
    """n (english, spanish) numbers whose English is not in `exclude` (e.g. the training sources): a fresh draw,
    to measure generalisation rather than recall. Digit counts are uniform in 1..max_digits as in training, or,
    with uniform=True, the numbers themselves are uniform in [0, 10**max_digits) (mostly the longest)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: expected a non-negative int")
    if not 1 <= max_digits <= 9:
        raise ValueError(f"max_digits={max_digits!r}: expected 1..9")
    exclude, rng, out, seen = set(exclude), random.Random(seed), [], set()
    if n > 10**max_digits - len(exclude):
        raise ValueError(f"n={n}: more than the {10**max_digits} numbers of up to {max_digits} digits hold "
                         f"outside exclude")
    while len(out) < n:
        number = rng.randrange(10**max_digits) if uniform else _digits_biased(rng, max_digits)
        english = english_number(number)
        if english not in exclude and english not in seen:
            seen.add(english)
            out.append((english, spanish_number(number)))
    return out


def write_pairs(pairs: Sequence[Pair], src_path: PathLike, tgt_path: PathLike) -> None:
    """Write sources and targets to two aligned UTF-8 files, one sentence per line."""
    for path, side in ((src_path, 0), (tgt_path, 1)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")


def write_splits(splits: dict[str, Sequence[Pair]], out_dir: PathLike, src_lang: str = "en",
                 tgt_lang: str = "es") -> dict[str, tuple[Path, Path]]:
    """Write each split as `out_dir/{split}.{src_lang}` and `.{tgt_lang}` (Multi30k's naming); return the paths."""
    out = {}
    for name, pairs in splits.items():
        paths = Path(out_dir) / f"{name}.{src_lang}", Path(out_dir) / f"{name}.{tgt_lang}"
        write_pairs(pairs, *paths)
        out[name] = paths
    return out


def make_demo_data(out_dir: PathLike, train: int = 20000, val: int = 500, test: int = 500,
                   seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """generate_splits + write_splits: the files the demo trains on."""
    return write_splits(generate_splits(train, val, test, seed), out_dir)
