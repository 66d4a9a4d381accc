"""What went wrong in one generated output: per-sample error categories for `sparse-bench compare-samples`.

Each category is a rule on the output, the reference and the source (the prompt the model saw). Words are
lowercased whitespace tokens stripped of punctuation. A sample may fall into several categories; a rule whose
input the sample lacks is not checked (and counted as such):

| category | rule | needs |
|---|---|---|
| `empty` | the output is empty after stripping whitespace | |
| `max_tokens` | the output has >= max_gen_toks - MAX_TOKENS_SLACK tokens: generation was cut, not ended | a tokenizer, the sample's `max_gen_toks` |
| `repetition_loop` | the task's per-sample `repeated_4gram` >= REPETITION_LOOP (share of 4-grams repeating an earlier one) | the metric (sparsebench_billsum logs it) |
| `copied_from_source` | >= COPY_SHARE of the output's word 8-grams occur in the source | an output of >= 8 words |
| `numbers_or_names_changed` | the output has a number or a capitalized name (not sentence-initial) found in neither the reference nor the source | |
| `off_topic` | < OFF_TOPIC_SHARE of the output's content words (>= 4 letters) occur in the reference or the source | >= 5 content words |

The retokenized length can differ from the generated one by a token or two, hence the slack.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

CATEGORIES = ("empty", "max_tokens", "repetition_loop", "copied_from_source", "numbers_or_names_changed",
              "off_topic")
MAX_TOKENS_SLACK = 2
REPETITION_LOOP = 0.5
COPY_N, COPY_SHARE = 8, 0.5
OFF_TOPIC_SHARE, OFF_TOPIC_MIN_WORDS = 0.2, 5
MEANING = {
    "empty": "no output at all",
    "max_tokens": "stopped at the token limit, not by the end-of-sequence token",
    "repetition_loop": f"repeats itself (>= {REPETITION_LOOP:.0%} of its 4-grams repeat an earlier one)",
    "copied_from_source": f">= {COPY_SHARE:.0%} of its word {COPY_N}-grams are copied from the input",
    "numbers_or_names_changed": "has numbers or names found in neither the reference nor the input",
    "off_topic": f"< {OFF_TOPIC_SHARE:.0%} of its content words occur in the reference or the input",
}
PUNCTUATION = ".,;:!?()[]\"'`"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
CAPITALIZED = re.compile(r"\b[A-Z][a-zA-Z]+")
SENTENCE_START = re.compile(r"(^|[.!?:;\n]\s*)$")

TokenCounter = Callable[[str], int]


def words(text: str) -> list[str]:
    return [word for word in (token.strip(PUNCTUATION).lower() for token in text.split()) if word]


def generation_arguments(sample: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(prompt, generation kwargs) of a generation sample, from lm-eval's file form
    ({"gen_args_0": {"arg_0": prompt, "arg_1": kwargs}}) or its in-memory form ([[prompt, kwargs]])."""
    arguments = sample.get("arguments")
    if isinstance(arguments, dict):
        arguments = [[value.get("arg_0"), value.get("arg_1")] for value in arguments.values()]
    if not arguments or not isinstance(arguments[0], (list, tuple)) or len(arguments[0]) < 2:
        return None, {}
    prompt, kwargs = arguments[0][0], arguments[0][1]
    return (prompt if isinstance(prompt, str) else None), (kwargs if isinstance(kwargs, dict) else {})


def entities(text: str) -> set[str]:
    """Numbers (digits with their separators) and capitalized words that do not start a sentence."""
    names = {match.group() for match in CAPITALIZED.finditer(text)
             if not SENTENCE_START.search(text[:match.start()])}
    return {match.group() for match in NUMBER.finditer(text)} | names


def changed_entities(output: str, known_text: str) -> set[str]:
    """The output's `entities` that occur in `known_text` neither as a number nor as a word (any position)."""
    known = {match.group() for match in NUMBER.finditer(known_text)}
    known |= {token.strip(PUNCTUATION) for token in known_text.split()}
    return entities(output) - known


def _share_in(items: list, pool: set) -> float:
    return sum(item in pool for item in items) / len(items)


def categorize(output: str, reference: str, source: str | None, max_gen_toks: int | None = None,
               repeated_4gram: float | None = None, count_tokens: TokenCounter | None = None) -> dict[str, bool | None]:
    """{category: True / False, or None when not checked} for one output (rules in the module docstring)."""
    text = output.strip()
    found: dict[str, bool | None] = dict.fromkeys(CATEGORIES)
    found["empty"] = not text
    if count_tokens is not None and max_gen_toks:
        found["max_tokens"] = count_tokens(output) >= max_gen_toks - MAX_TOKENS_SLACK
    if repeated_4gram is not None:
        found["repetition_loop"] = repeated_4gram >= REPETITION_LOOP
    output_words, known = words(text), set(words(reference)) | set(words(source or ""))
    if source is not None:
        grams = [tuple(output_words[i:i + COPY_N]) for i in range(len(output_words) - COPY_N + 1)]
        source_words = words(source)
        source_grams = {tuple(source_words[i:i + COPY_N]) for i in range(len(source_words) - COPY_N + 1)}
        found["copied_from_source"] = bool(grams) and _share_in(grams, source_grams) >= COPY_SHARE
    found["numbers_or_names_changed"] = bool(changed_entities(text, f"{reference}\n{source or ''}"))
    content = [word for word in output_words if word.isalpha() and len(word) >= 4]
    found["off_topic"] = len(content) >= OFF_TOPIC_MIN_WORDS and _share_in(content, known) < OFF_TOPIC_SHARE
    return found


def categorize_sample(sample: dict[str, Any], count_tokens: TokenCounter | None = None) -> dict[str, bool | None]:
    """`categorize` for one lm-eval generation sample: its first response, `target`, prompt and max_gen_toks."""
    responses = sample.get("filtered_resps") or []
    output = responses[0] if responses and isinstance(responses[0], str) else ""
    prompt, kwargs = generation_arguments(sample)
    repeated = sample.get("repeated_4gram")
    return categorize(output, str(sample.get("target", "")), prompt, kwargs.get("max_gen_toks"),
                      float(repeated) if isinstance(repeated, (int, float)) else None, count_tokens)


def count_categories(found: list[dict[str, bool | None]]) -> dict[str, int | None]:
    """{category: samples in it, or None if no sample could be checked}; `ok`: samples in no category."""
    counts: dict[str, int | None] = {}
    for category in CATEGORIES:
        checked = [flags[category] for flags in found if flags[category] is not None]
        counts[category] = sum(checked) if checked else None
    counts["ok"] = sum(not any(flags.values()) for flags in found)
    return counts


def labels(flags: dict[str, bool | None]) -> list[str]:
    return [category for category in CATEGORIES if flags.get(category)]


__all__ = ["CATEGORIES", "MEANING", "categorize", "categorize_sample", "changed_entities", "count_categories",
           "entities", "generation_arguments", "labels", "words"]
