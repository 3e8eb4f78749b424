"""LlamaGuard renders exchanges in Llama-Guard-3's own message format, checked against the real chat templates.

The templates in tests/fixtures are verbatim copies of Meta's Llama-Guard-3-1B and -8B chat templates (provenance
in tests/fixtures/llama_guard_3_chat_templates.md). A word-level tokenizer built in memory carries them, so
nothing is downloaded and no model is loaded; `prob_safe` is covered in test_guards.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dispsafe_nb.guards.llama_guard import LlamaGuard, detect_content_format

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATE_1B = FIXTURES / "llama_guard_3_1b_chat_template.jinja"
TEMPLATE_8B = FIXTURES / "llama_guard_3_8b_chat_template.jinja"

PROMPT = "How do I bake sourdough bread at home?"
RESPONSE = "Mix flour, water and starter, let it rise overnight, then bake at 230 C."


def _tokenizer(template_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "safe": 1, "unsafe": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[UNK]")
    tok.chat_template = template_path.read_text()
    return tok


def _conversation(text: str) -> list[tuple[str, str]]:
    """The (section, text) turns between the template's conversation markers."""
    start, end = "<BEGIN CONVERSATION>\n\n", "<END CONVERSATION>"
    assert start in text and end in text, text
    body = text[text.index(start) + len(start) : text.index(end)]
    turns = []
    for chunk in body.split("\n\n"):
        if chunk:
            section, _, said = chunk.partition(": ")
            turns.append((section, said))
    return turns


def _renders_the_exchange(text: str) -> bool:
    """The prompt is the User turn and the response the Agent turn, both non-empty, in the template's sections."""
    turns = _conversation(text)
    return turns == [("User", PROMPT), ("Agent", RESPONSE)] and all(said.strip() for _, said in turns)


@pytest.fixture(scope="module")
def tok_1b():
    return _tokenizer(TEMPLATE_1B)


@pytest.fixture(scope="module")
def tok_8b():
    return _tokenizer(TEMPLATE_8B)


def test_fixtures_are_the_two_llama_guard_3_templates():
    t1, t8 = TEMPLATE_1B.read_text(), TEMPLATE_8B.read_text()
    assert "content['text']" in t1 and "selectattr('type', 'equalto', 'text')" in t1
    assert "content.strip()" in t8 and "S14: Code Interpreter Abuse." in t8


def test_llama_guard_3_1b_template_gets_prompt_and_response_as_user_and_agent_turns(tok_1b):
    guard = LlamaGuard(model=None, tokenizer=tok_1b)
    assert guard.content_format == "parts"
    text = guard.guard_prompt(PROMPT, RESPONSE)
    assert _renders_the_exchange(text), text
    assert f"User: {PROMPT}\n\nAgent: {RESPONSE}\n\n<END CONVERSATION>" in text
    assert "ONLY THE LAST Agent message" in text  # the template classifies the response, not the prompt
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>")


def test_plain_string_content_renders_empty_turns_under_the_1b_template(tok_1b):
    """The old adapter's rendering: the 1B template silently drops both turns, so the check above fails."""
    old = LlamaGuard(model=None, tokenizer=tok_1b, content_format="string").guard_prompt(PROMPT, RESPONSE)
    assert not _renders_the_exchange(old)
    assert _conversation(old) == [] and PROMPT not in old and RESPONSE not in old


def test_llama_guard_3_8b_template_takes_plain_strings(tok_8b):
    guard = LlamaGuard(model=None, tokenizer=tok_8b)
    assert guard.content_format == "string"
    assert _renders_the_exchange(guard.guard_prompt(PROMPT, RESPONSE))
    with pytest.raises(Exception, match="strip"):  # the 8B template cannot take content parts
        LlamaGuard(model=None, tokenizer=tok_8b, content_format="parts").guard_prompt(PROMPT, RESPONSE)


def test_content_format_detection_and_validation(tok_1b, tok_8b):
    assert detect_content_format(tok_1b) == "parts"
    assert detect_content_format(tok_8b) == "string"
    with pytest.raises(ValueError, match="content_format"):
        LlamaGuard(model=None, tokenizer=tok_1b, content_format="list")
    blank = _tokenizer(TEMPLATE_1B)
    blank.chat_template = "{{ 'no turns at all' }}"
    with pytest.raises(ValueError, match="content format"):
        detect_content_format(blank)


def test_describe_reports_quantisation_and_content_format(tok_1b):
    guard = LlamaGuard(model=None, tokenizer=tok_1b, name="meta-llama/Llama-Guard-3-1B", quantization="nf4")
    assert guard.describe() == {
        "guard": "llama-guard",
        "name": "meta-llama/Llama-Guard-3-1B",
        "quantization": "nf4",
        "content_format": "parts",
    }
    assert LlamaGuard(model=None, tokenizer=tok_1b).describe()["quantization"] == "unknown"


@pytest.mark.slow
def test_load_llama_guard_records_the_loaded_quantisation(tiny_llama_dir):
    from dispsafe_nb.guards.llama_guard import load_llama_guard

    guard = load_llama_guard(str(tiny_llama_dir))
    described = guard.describe()
    assert described["quantization"] == "none"
    assert described["content_format"] == "string"  # the tiny model carries SmolLM2's plain-string template
    assert PROMPT in guard.guard_prompt(PROMPT, RESPONSE) and RESPONSE in guard.guard_prompt(PROMPT, RESPONSE)
