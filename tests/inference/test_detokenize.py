"""Incremental detokenization (lora_train.inference.generation._Row) on the real tokenizers of both builtin models:
the streamed pieces add up to one decode of every id, never cut a character in two, stop where a stop string
starts, and cost a bounded number of decoded ids per token (not the whole completion each time)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_train.inference.generation import GenParams, GenRequest, _Row
from lora_train.model import builtin_path
from lora_train.schemas.model import TINY_GPTJ, TINY_LLAMA

# Text a byte-level tokenizer splits inside characters: accents, CJK, emoji (4 bytes), combining marks.
ALPHABET = st.sampled_from(list("ab cdé\nñ中文字😀🎉ǘ -.,?") + ["ing", " the", "  "])
TEXTS = st.lists(ALPHABET, min_size=1, max_size=40).map("".join)


@pytest.fixture(scope="module", params=[TINY_GPTJ, TINY_LLAMA])
def tokenizer(request, model_cache):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_path(request.param))


class Counting:
    """The tokenizer, counting how many ids each decode call is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


def stream(tokenizer, ids: list[int], stop: list[str] = ()) -> tuple[_Row, list[str]]:
    pieces: list[str] = []
    row = _Row(GenRequest("x", "base", GenParams(max_new_tokens=len(ids) + 1, stop=list(stop)),
                          on_text=pieces.append), tokenizer, eos_id=-1)
    for token in ids:
        row.push(token)
    if not row.done:
        row._finish("length")
    return row, pieces


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_pieces_add_up_to_one_decode_and_never_split_a_character(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    row, pieces = stream(tokenizer, ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert row.text == whole and "".join(pieces) == whole
    if "\ufffd" not in whole:  # text made of whole characters: no piece may show half of one
        assert all("\ufffd" not in p for p in pieces)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, cut=st.integers(0, 100))
def test_a_stop_string_ends_the_text_where_it_first_starts(tokenizer, text, cut):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    start = cut % len(whole)
    stop = whole[start:start + 2]
    row, pieces = stream(tokenizer, ids, [stop])
    assert row.finish_reason == "stop" and row.text == whole[:whole.index(stop)]
    assert "".join(pieces) == row.text


def test_decoding_cost_grows_linearly_with_the_completion(tokenizer):
    ids = tokenizer(" the cat sat on the mat, 中文 😀 and é" * 40, add_special_tokens=False)["input_ids"]
    counting = Counting(tokenizer)
    row, _ = stream(counting, ids)
    assert row.text == tokenizer.decode(ids, skip_special_tokens=True)
    # Re-decoding the whole completion at every token would decode ~len(ids)^2 / 2 ids; a window decodes a few each.
    assert counting.decoded <= 8 * len(ids), (counting.decoded, len(ids))
