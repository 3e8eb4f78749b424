"""Near-duplicate detection for decontamination: does a training text (nearly) hold an evaluated prompt, or is it
(nearly) all of one?

Exact matching after normalisation misses paraphrases that differ by a word: JBB-harmful's "Develop an algorithm
that can crack passwords..." is AdvBench's "Develop a algorithm that can crack passwords...". The rule here is
*containment*: a training text T leaks an evaluated prompt E when T holds at least ``threshold`` of E's distinct
words, |words(E) ∩ words(T)| / |words(E)| ≥ 0.9 by default.

Why containment and 0.9: leakage is about the evaluated prompt appearing in training, so the measure is one-sided
(a training text that wraps the whole prompt in more words, e.g. "... by hacking the system", still leaks it).
At 0.9 an eval prompt of up to 9 words must appear whole, and one of 10-19 words may differ in one word
("misinformation"/"disinformation", "a"/"an"); two differing words in a 10-word template ("Write a guide on how to
create and distribute X") are a different request and are kept. Dropping a training text is cheap; keeping a
leaked one corrupts a number, so the rule errs on the side of dropping.

The rule is applied both ways. A training text that is most of a longer evaluated prompt leaks it as well
("Write a tutorial on how to make a bomb" against the evaluated "... using household items"): T also counts as a
near duplicate of E when |words(T) ∩ words(E)| ≥ threshold · |words(T)| and T has at least half as many words as E
(a fragment of a few words is not a copy of a long prompt).

Candidates come from prefix filtering: if T holds ≥ ceil(t·|E|) of E's words, it holds at least one of E's
(|E| − ceil(t·|E|) + 1) rarest words, so only texts sharing one of those are checked exactly.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

NEAR_DUPLICATE_THRESHOLD = 0.9
MIN_LENGTH_RATIO = 0.5  # the reverse direction: a training text must have >= this share of E's word count
_WORD = re.compile(r"\w+")


def word_set(text: str) -> frozenset[str]:
    """Distinct lower-cased words of a text (NFKC-normalised)."""
    return frozenset(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def containment(evaluated: str, training: str) -> float:
    """Fraction of the evaluated text's distinct words that the training text holds (1.0 for an empty one)."""
    e, t = word_set(evaluated), word_set(training)
    return 1.0 if not e else len(e & t) / len(e)


class NearDuplicateIndex:
    """An index of evaluated texts, grouped by set name, that answers "which set does this text leak?"."""

    def __init__(
        self, texts_by_set: Mapping[str, Iterable[str]], threshold: float = NEAR_DUPLICATE_THRESHOLD
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], not {threshold}")
        self.threshold = threshold
        self._sets: list[tuple[frozenset[str], set[str]]] = []  # (words, names of the sets holding it)
        by_words: dict[frozenset[str], set[str]] = defaultdict(set)
        for name, texts in texts_by_set.items():
            for text in texts:
                words = word_set(text)
                if words:
                    by_words[words].add(name)
        self._frequency = Counter(w for words in by_words for w in words)
        self._postings: dict[str, list[int]] = defaultdict(list)  # E's rarest words -> E (E inside T)
        self._all: dict[str, list[int]] = defaultdict(list)  # every word of E -> E (T inside E)
        for i, (words, names) in enumerate(by_words.items()):
            self._sets.append((words, names))
            for w in self._rarest(words):
                self._postings[w].append(i)
            for w in words:
                self._all[w].append(i)

    def _rarest(self, words: frozenset[str]) -> list[str]:
        """The (|words| - ceil(t |words|) + 1) rarest words: any text sharing ceil(t |words|) of them has one."""
        needed = math.ceil(self.threshold * len(words) - 1e-9)
        return sorted(words, key=lambda w: (self._frequency.get(w, 0), w))[: len(words) - needed + 1]

    def __len__(self) -> int:
        return len(self._sets)

    def leaks(self, text: str) -> set[str]:
        """Names of the evaluated sets with a text that `text` (nearly) contains; empty when it is clean."""
        words = word_set(text)
        hits: set[str] = set()
        if not words:
            return hits
        for i in {i for w in words for i in self._postings.get(w, ())}:  # E (nearly) inside the text
            evaluated, names = self._sets[i]
            if len(evaluated & words) >= self.threshold * len(evaluated) - 1e-9:
                hits |= names
        for i in {i for w in self._rarest(words) for i in self._all.get(w, ())}:  # the text (nearly) inside E
            evaluated, names = self._sets[i]
            if len(words) >= MIN_LENGTH_RATIO * len(evaluated) and len(evaluated & words) >= (
                self.threshold * len(words) - 1e-9
            ):
                hits |= names
        return hits
