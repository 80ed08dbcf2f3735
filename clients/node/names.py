"""Cross-script name normalisation, blocking keys and explained fuzzy scoring.

Name search at a node is two-stage (``bench/names.py`` measures it):

1. **Blocking.** :func:`index_keys` gives each stored name a handful of keys (4.8 on
   average): its spelling (``=mohammed.rashid``), one consonant *skeleton* per significant
   token ("Mohammed", "Muhammad", "محمد" and "Мухаммед" all give ``mhmt``) and one
   order-free key per pair of skeletons (``mhmt.rxt``). The store keeps rows
   ``(key, nkeys, name_id)`` under that primary key. A query reads its keys' postings, most
   selective first, each read capped (nearest ``nkeys`` first) so a common given name cannot
   blow the time budget, and scores the few hundred names sharing the most and rarest keys;
   ``bench/names.py`` is a worked example. A plain table beats FTS5 there: an FTS5 ``OR``
   query ranks every posting of a common key.
2. **Scoring.** :func:`score` aligns the tokens of two names, order-free, and returns a 0..1
   :class:`Match` that says why, e.g. ``token 'rashid' ~ 'rachid' (phonetic)``.

Libraries, and why
------------------
* Transliteration: ``anyascii`` — pure Python, no dependencies, maintained, every script
  (Arabic, Cyrillic, Greek, Hebrew, Han…), about 3 µs a name. OpenSanctions' ``rigour`` was
  tried: its Rust ``maybe_ascii`` covers only Latin, Cyrillic, Greek, Armenian, Georgian and
  Hangul and hands Arabic and Han to ``normality``, which imports PyICU. PyICU has no wheel
  on PyPI, so every install compiles it against Debian's libicu-dev (1 min 53 s here), and
  ``pip install rigour`` cannot leave it out. For Arabic its output is no better for matching
  (ta marbuta becomes ``t``, ayn ``?``).
* Comparison: ``rapidfuzz`` (edit distances in C++, maintained).
* Phonetics: a consonant skeleton, not Soundex or Metaphone (``jellyfish``, ``rigour``).
  Those encode English spelling: Metaphone silences ``h`` after a vowel, so "Ahmed" gives
  ``AMT`` but the Arabic-derived "hmd" gives ``HMT``, and "ywsf" (يوسف) gives ``SF`` against
  ``YSF`` for "Yusuf", so keys from different scripts disagree. The skeleton folds only the
  variants that romanisations of one sound produce (kh/h, ch/sh, ph/f, q/k/g, doubled
  letters, final devoicing) and drops vowels, which Arabic does not write; the vowels are
  then compared separately, so "Mahmoud" does not pass for "Mohammed". These rules derive
  keys, they do not transliterate: every script goes through ``anyascii`` first.

Everything here is pure: no I/O, deterministic, safe to call from any thread.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from anyascii import anyascii
from rapidfuzz.distance import Indel

__all__ = ["EXACT_PREFIX", "MATCH_THRESHOLD", "MAX_NAME_CHARS", "PAIR_SEP", "KeyKind", "Match",
           "NameToken", "PreparedName", "index_keys", "key_kind", "name_tokens", "normalize_name",
           "prepare", "query_keys", "rank", "score"]

MATCH_THRESHOLD: Final[float] = 0.80
"""A score at or above this is a match; tests/test_names.py pins the pairs either side."""
MAX_NAME_CHARS: Final[int] = 300
"""Longer input is cut here: no real name is longer, and the cost per name stays bounded."""
MAX_KEY_TOKENS: Final[int] = 4
"""Tokens that yield keys: at most 1 spelling key + 6 pair keys + 4 skeleton keys a name."""
PAIR_SEP: Final[str] = "."
"""Joins the two skeletons of a pair key; skeletons themselves are ``[a-z0-9]+``."""
EXACT_PREFIX: Final[str] = "="
"""Starts the one key that holds a name's own spelling: its tokens, sorted, joined by "."."""
KeyKind = Literal["spelling", "pair", "skeleton"]

_MIN_TOKEN_SIM: Final = 0.8  # below this two tokens differ: "Hassan"/"Hussein", "Petrov"/"Petrenko"
_UNMATCHED_WEIGHT: Final = 0.5  # an extra middle name costs half a token, not a whole one
_PHONETIC_SIM: Final = 0.92  # same skeleton, compatible vowels: "Mohammed" ~ "Muhammad"
_ABJAD_SIM: Final = 0.9  # same skeleton, one side from a script without short vowels
_JOINED_SIM: Final = 0.85  # same skeleton only once spaces are dropped: "Abubakr" ~ "Abu Bakr"
_ORG_CAP: Final = 0.6  # a company named after a person is not that person
_ORDER_FACTOR: Final = 0.98  # exact order ranks above reversed order, both still match

# Scripts whose spelling omits short vowels: compare their tokens by consonants only.
_ABJADS: Final = frozenset({"Arabic", "Hebrew", "Syriac"})
# Arabic short-vowel marks, tatweel and Hebrew points: writers use them inconsistently.
_MARKS = re.compile("[\u0591-\u05c7\u0610-\u061a\u0640\u064b-\u065f\u0670\u06d6-\u06ed]")
_APOSTROPHES = re.compile("['`\u00b4\u2018\u2019\u02b9-\u02bf]")  # O'Brien, Al'-, ayn/hamza
# Split on anything but letters, digits and combining marks ("i̇" is how "İ" casefolds).
_NON_WORD = re.compile(
    "[^\\w\u0300-\u036f\u0483-\u0489\u0900-\u0dff\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff]+|_+")
_NON_ASCII_WORD = re.compile(r"[^a-z0-9]+")
# The Arabic article is written joined ("الراشد"); split it off so it is a particle like "al".
_AR_ARTICLE = re.compile(r"^(عبد)?ال(?=\w\w)")

_ARTICLES: Final = frozenset({"al", "el", "ul"})
_ASSIMILATED = re.compile(r"^[aeu]([b-df-hj-np-tv-z]{1,2})$")  # "ar" in "ar Rashid", "as Sayed"
_SON_OF: Final = frozenset({"bin", "ibn", "bint", "ben", "bn", "bnt", "ould"})
_NAME_PARTICLES: Final = frozenset(
    {"van", "von", "de", "der", "den", "del", "della", "di", "da", "du", "dos", "das", "la", "le",
     "ten", "ter", "zu", "y"})
_TITLES: Final = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof"})
# Legal forms at the end of a name mark an organisation (the entity's schema is the real
# authority; this only keeps "Rashid Holdings Ltd" from matching the person "Rashid").
_ORG_FORMS: Final = frozenset(
    {"llc", "ltd", "limited", "inc", "incorporated", "corp", "corporation", "co", "company",
     "gmbh", "ag", "kg", "sa", "sarl", "sas", "srl", "spa", "bv", "nv", "plc", "llp", "lp",
     "ooo", "oao", "zao", "pao", "tov", "jsc", "ojsc", "cjsc", "pjsc", "fzco", "fze", "fzc",
     "wll", "holding", "holdings", "group", "kft", "sro", "spzoo"})
_LEADING_ORG_FORMS: Final = frozenset({"ooo", "oao", "zao", "pao", "tov", "ao", "pt"})
# "Abdurrahman", "Abdul Rahman", "Abd al-Rahman": servant-of + (article) + name.
_ABD = re.compile(r"^abd(?:[aeiou]{1,2}(?:l|(?=([b-df-hj-np-tv-z])\1))?)?([a-z]*)$")

# Spelling variants of one sound across romanisations; longest first, applied in one pass.
_FOLD = re.compile(r"dzh|sch|tch|sh|ch|zh|dj|kh|gh|ph|th|dh|ck|x|q|c|g")
_FOLD_TO: Final = {"dzh": "j", "sch": "x", "tch": "x", "sh": "x", "ch": "x", "zh": "j",
                   "dj": "j", "kh": "h", "gh": "k", "ph": "f", "th": "t", "dh": "d",
                   "ck": "k", "x": "ks", "q": "k", "c": "k", "g": "k"}
_LEAD_VOWELS = re.compile(r"(?:[aeiouy][aeiouyw]*)?")
_SYLLABLE = re.compile(r"([^aeiouyw]|^w)([aeiouyw]*)")  # medial w is a vowel, initial w is not
_DEVOICE: Final = str.maketrans("dbzv", "tpsf")  # Mehmet/Mohammed, Ivanoff/Ivanov
# Vowel classes that romanisations swap for one sound (o/u, i/y); a lone "e" may stand for
# any of them ("Youssef", "Mohammed"). Medial w and y are vowels: Arabic و and ي are long
# vowels as often as consonants.
_VOWEL_CLASS: Final = {"a": "a", "e": "", "i": "i", "y": "i", "o": "u", "u": "u", "w": "u"}


@dataclass(frozen=True, slots=True)
class Match:
    """A score in [0, 1] and the reasons for it, most general first."""

    score: float
    why: tuple[str, ...]

    @property
    def is_match(self) -> bool:
        return self.score >= MATCH_THRESHOLD

    def as_dict(self) -> dict[str, object]:
        return {"score": self.score, "why": list(self.why)}


@dataclass(frozen=True, slots=True)
class NameToken:
    """One significant token: its ASCII form, consonant skeleton and source script."""

    text: str
    skeleton: str
    script: str | None  # None for Latin/ASCII input
    gaps: tuple[str, ...]  # the vowels written after each skeleton consonant
    weight: float

    @property
    def abjad(self) -> bool:
        return self.script in _ABJADS


@dataclass(frozen=True, slots=True)
class PreparedName:
    """A name analysed once, to be scored against many others (see :func:`prepare`)."""

    original: str
    normalized: str
    tokens: tuple[NameToken, ...]
    particles: tuple[str, ...]
    org_form: str | None
    scripts: tuple[str, ...]


def _script(word: str) -> str | None:
    """The script of the first non-ASCII letter, from the Unicode character name."""
    for ch in word:
        if ord(ch) > 127 and ch.isalpha():
            head = unicodedata.name(ch, "UNKNOWN").split()[0]
            return "Han" if head == "CJK" else None if head == "LATIN" else head.title()
    return None


def _to_ascii(word: str, script: str | None) -> str:
    if script == "Han":
        # anyascii runs syllables together ("XiJinPing"); pinyin convention is surname, then
        # the given name as one word: "xi jinping".
        syllables = [anyascii(ch) for ch in word]
        return f"{syllables[0]} {''.join(syllables[1:])}" if len(syllables) > 1 else syllables[0]
    return anyascii(word)


def _raw_words(name: str) -> list[tuple[str, str | None]]:
    """ASCII words of a name, particles included, each with its source script."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be str, not {type(name).__name__}")
    text = unicodedata.normalize("NFKC", name[:MAX_NAME_CHARS]).casefold()
    text = _APOSTROPHES.sub("", _MARKS.sub("", text))
    out: list[tuple[str, str | None]] = []
    for word in _NON_WORD.split(text):
        if word:
            out.extend(_word(word))
    return out


@lru_cache(maxsize=1 << 16)
def _word(word: str) -> tuple[tuple[str, str | None], ...]:
    """One written word as ASCII words with their script; cached, as names share words."""
    if word.isascii():
        return ((word, None),)
    script = _script(word)
    if script == "Arabic" and (m := _AR_ARTICLE.match(word)):
        word = f"{m.group(1) or ''} al {word[m.end():]}"
    ascii_text = _APOSTROPHES.sub("", _to_ascii(word, script).casefold())
    return tuple((w, script) for w in _NON_ASCII_WORD.split(ascii_text) if w)


@lru_cache(maxsize=1 << 16)
def _phonetic(text: str) -> tuple[str, tuple[str, ...]]:
    """Consonant skeleton (the blocking key) and the vowels after each of its consonants."""
    folded = _FOLD.sub(lambda m: _FOLD_TO[m.group()], text)
    m = _LEAD_VOWELS.match(folded)
    lead = m.end() if m else 0
    cons: list[str] = []
    gaps: list[str] = [folded[:lead]]  # gaps[0]: leading vowels; gaps[k + 1]: after cons[k]
    for c, vowels in _SYLLABLE.findall(folded, lead):
        if cons and cons[-1] == c:  # doubled letters, even across a vowel: "Baghdadi"
            gaps[-1] += vowels
        else:
            cons.append(c)
            gaps.append(vowels)
    if len(cons) >= 3 and cons[0] == "l" and text.startswith(("al", "el")):
        del cons[0], gaps[0]  # joined article: "Alrachid" is "al Rachid"
    if len(cons) >= 2 and cons[-1] == "h":
        cons.pop()  # ta marbuta and final -ah: "Osama" / "أسامة", "Fatima" / "Fatimah"
        gaps[-2] += gaps.pop()
    if cons:
        cons[-1] = cons[-1].translate(_DEVOICE)
    return "".join(cons) or text[:1], tuple(gaps)


@lru_cache(maxsize=1 << 16)
def _token(text: str, script: str | None) -> NameToken:
    skel, gaps = _phonetic(text)
    return NameToken(text, skel, script, gaps, 0.6 + 0.1 * min(len(skel), 4))


def _latin_gaps_agree(a: str, b: str) -> bool:
    if a == b or not a or not b or "e" in a or "e" in b:
        return True  # a vowel dropped ("Mehmet") or written "e" ("Youssef") is no evidence
    return bool({_VOWEL_CLASS[c] for c in a} & {_VOWEL_CLASS[c] for c in b} - {""})


def _abjad_gap_satisfied(abjad: str, latin: str) -> bool:
    """Arabic writes long vowels (و, ي, ا/ى): the romanisation must have one of that class."""
    need = {_VOWEL_CLASS[c] for c in abjad} - {""}
    have = {_VOWEL_CLASS[c] for c in latin} | ({"a", "i"} if "e" in latin else set())
    return need <= have


def _vowels_agree(a: NameToken, b: NameToken) -> bool:
    """Same skeleton; do the written vowels allow one name? ("Mohammed" vs "Mahmoud": no)."""
    if len(a.gaps) != len(b.gaps):
        return False
    pairs = list(zip(a.gaps[1:], b.gaps[1:]))  # leading vowels come and go: Ibrahim, Brahim
    if a.abjad and b.abjad:
        return all({_VOWEL_CLASS[c] for c in x} == {_VOWEL_CLASS[c] for c in y} for x, y in pairs)
    if a.abjad or b.abjad:
        return all(_abjad_gap_satisfied(x, y) if a.abjad else _abjad_gap_satisfied(y, x)
                   for x, y in pairs)
    return all(_latin_gaps_agree(x, y) for x, y in pairs)


def _split_abd(text: str) -> list[str]:
    m = _ABD.match(text)
    if m is None:
        return [text]
    rest = m.group(2)
    if len(rest) >= 2 and rest[0] == rest[1]:
        rest = rest[1:]  # assimilated article: "Abdurrahman"
    return ["abd", rest] if len(rest) >= 2 else ["abd"]


@lru_cache(maxsize=1 << 15)
def prepare(name: str) -> PreparedName:
    """Analyse a name once; cached, since stores hold many repeats of common names."""
    words = _raw_words(name)
    normalized = " ".join(w for w, _ in words)
    end = len(words)
    while end > 1 and words[end - 1][0] in _ORG_FORMS:
        end -= 1  # legal forms trail ("as" leading "As-Sayed" is an article) ...
    org_form = words[end][0] if end < len(words) else None
    if len(words) > 1 and words[0][0] in _LEADING_ORG_FORMS:
        org_form, words = words[0][0], words[1:]  # ... except in "ООО Ромашка"
        end -= 1
    tokens: list[NameToken] = []
    particles: list[str] = []
    for i, (text, script) in enumerate(words[:end]):
        inner = 0 < i < end - 1
        nxt = words[i + 1][0] if i < end - 1 else ""
        assimilated = _ASSIMILATED.match(text)
        if (text in _TITLES
                or (nxt and text in _ARTICLES)
                or (nxt and assimilated is not None and nxt.startswith(assimilated.group(1)))
                or (inner and (text in _SON_OF or text in _NAME_PARTICLES))):
            particles.append(text)
        else:
            tokens.extend(_token(t, script) for t in _split_abd(text))
    if not tokens:  # a name made only of particles ("Al") is still a name
        tokens, particles = [_token(t, s) for t, s in words[:end]], []
    scripts = sorted({s for _, s in words if s})
    return PreparedName(
        original=name, normalized=normalized, tokens=tuple(tokens),
        particles=tuple(dict.fromkeys(particles)), org_form=org_form, scripts=tuple(scripts))


def normalize_name(name: str) -> str:
    """NFKC, casefold, any script to ASCII Latin, punctuation stripped, spaces collapsed."""
    return prepare(name).normalized


def name_tokens(name: str) -> list[str]:
    """Significant tokens: particles ("al", "bin", "van"), titles and legal forms dropped."""
    return [t.text for t in prepare(name).tokens]


def _key_tokens(items: list[str]) -> list[str]:
    items = list(dict.fromkeys(items))
    # Past MAX_KEY_TOKENS keep the first names and the last (family) name: they identify.
    return items[: MAX_KEY_TOKENS - 1] + items[-1:] if len(items) > MAX_KEY_TOKENS else items


def index_keys(name: str) -> list[str]:
    """Blocking keys to store for a name, most selective first: spelling, pairs, skeletons.

    The spelling key (``=mohammed.rashid``) lets an exact name surface among a thousand
    sound-alikes ("Mehmet Yilmaz" among "Mohammed Yilmaz"); pair keys (``mhmt.rxt``) keep a
    query for a common given name plus a surname cheap; single skeletons find partial names.
    """
    tokens = prepare(name).tokens
    if not tokens:
        return []
    skels = _key_tokens([t.skeleton for t in tokens])
    pairs = sorted({PAIR_SEP.join(sorted((a, b))) for i, a in enumerate(skels)
                    for b in skels[i + 1:]})
    spelling = EXACT_PREFIX + PAIR_SEP.join(sorted(_key_tokens([t.text for t in tokens])))
    return [spelling, *pairs, *sorted(skels)]


def key_kind(key: str) -> KeyKind:
    """What sharing this key says: the same spelling, two sound-alike tokens, or one."""
    if key.startswith(EXACT_PREFIX):
        return "spelling"
    return "pair" if PAIR_SEP in key else "skeleton"


def query_keys(query: str) -> list[str]:
    """Keys to look up for a query: the same scheme as :func:`index_keys`, most selective first."""
    return index_keys(query)


def _token_sim(a: NameToken, b: NameToken) -> tuple[float, str]:
    """Similarity of two tokens and its kind."""
    if a.text == b.text:
        return 1.0, "exact"
    return _similar(a.text, a.script, b.text, b.script)


@lru_cache(maxsize=1 << 16)
def _similar(a_text: str, a_script: str | None, b_text: str, b_script: str | None,
             ) -> tuple[float, str]:
    # Cached by strings, whose hashes Python keeps: a query meets the same tokens often.
    a, b = _token(a_text, a_script), _token(b_text, b_script)
    text = Indel.normalized_similarity(a.text, b.text)
    if a.skeleton != b.skeleton:
        return text, "spelling"
    if not _vowels_agree(a, b):
        return text, "vowels"
    if a.abjad or b.abjad:
        return max(text, _ABJAD_SIM), "abjad"
    return max(text, _PHONETIC_SIM), "phonetic"


def _reason(a: NameToken, b: NameToken, sim: float, kind: str) -> str:
    pair = f"token '{a.text}' ~ '{b.text}'"
    if kind == "exact":
        return f"token '{a.text}' = '{b.text}'"
    if kind == "abjad":
        return f"{pair} (same consonants; {a.script if a.abjad else b.script} omits short vowels)"
    if kind == "vowels":
        return f"token '{a.text}' vs '{b.text}': same consonants, other vowels"
    return f"{pair} ({kind})" if kind == "phonetic" else f"{pair} (spelling {sim:.2f})"


def score(query: str | PreparedName, candidate: str | PreparedName, *,
          explain: bool = True) -> Match:
    """Score how well ``candidate`` matches ``query``, in [0, 1], with the reasons.

    Order-free token alignment: each query token takes its best free candidate token; an
    unmatched token on either side costs half its weight. ``explain=False`` leaves ``why``
    empty and is faster: score many candidates so, then explain the few shown. Deterministic.
    """
    q = query if isinstance(query, PreparedName) else prepare(query)
    c = candidate if isinstance(candidate, PreparedName) else prepare(candidate)
    qt, ct = q.tokens, c.tokens
    sims: list[tuple[float, int, int, str]] = []
    for i, a in enumerate(qt):  # plain loops: this runs for every candidate of a search
        for j, b in enumerate(ct):
            sim, kind = _token_sim(a, b)
            if sim >= _MIN_TOKEN_SIM:
                sims.append((-sim, i, j, kind))
    sims.sort()  # best first; ties by position, so the result is deterministic
    used_q: set[int] = set()
    used_c: set[int] = set()
    pairs: list[tuple[int, int, float, str]] = []
    num = den = 0.0
    for neg, i, j, kind in sims:
        if i not in used_q and j not in used_c:
            used_q.add(i)
            used_c.add(j)
            pairs.append((i, j, -neg, kind))
            w = (qt[i].weight + ct[j].weight) / 2
            num -= neg * w
            den += w
    for side, used in ((qt, used_q), (ct, used_c)):
        for k, t in enumerate(side):
            if k not in used:
                den += _UNMATCHED_WEIGHT * t.weight
    value = num / den if den else 0.0
    pairs.sort()
    flags: list[str] = []
    js = [p[1] for p in pairs]
    if js != sorted(js):
        value *= _ORDER_FACTOR
        flags.append("token order differs")
    if (pairs and value < _JOINED_SIM and len(qt) != len(ct)
            and len(joined := _phonetic("".join(t.text for t in qt))[0]) >= 3
            and joined == _phonetic("".join(t.text for t in ct))[0]):
        value = _JOINED_SIM  # "Abubakr" ~ "Abu Bakr"
        flags.append("same consonants once spaces are ignored")
    if (q.org_form is None) != (c.org_form is None):
        value = min(value, _ORG_CAP)
        flags.append(f"organisation (legal form '{q.org_form or c.org_form}') vs person")
    if not explain:
        return Match(round(value, 4), ())
    why = [f"transliterated from {s}" for s in sorted({*q.scripts, *c.scripts})]
    why += [f"particle '{p}' ignored" for p in dict.fromkeys(q.particles + c.particles)]
    why += [_reason(qt[i], ct[j], sim, kind) for i, j, sim, kind in pairs]
    why += [f"query token '{t.text}' unmatched" for k, t in enumerate(qt) if k not in used_q]
    why += [f"candidate token '{t.text}' unmatched" for k, t in enumerate(ct) if k not in used_c]
    why += [_reason(a, b, *_token_sim(a, b)) for i, a in enumerate(qt) for j, b in enumerate(ct)
            if i not in used_q and j not in used_c and a.skeleton == b.skeleton]  # "Mahmoud"
    return Match(round(value, 4), tuple(why + flags))


def rank(query: str, candidates: Sequence[str], limit: int = 20) -> list[tuple[str, Match]]:
    """Candidates at or above :data:`MATCH_THRESHOLD`, best first (ties by name: stable)."""
    q = prepare(query)
    scored = [(score(q, prepare(c), explain=False).score, c) for c in candidates]
    best = sorted((-v, c) for v, c in scored if v >= MATCH_THRESHOLD)[:limit]
    return [(c, score(q, prepare(c))) for _, c in best]
