"""Generator inputs built as transformers' RagRetriever.postprocess_docs builds them."""

from __future__ import annotations

import numpy as np
import pytest

from ragrt.errors import InputError
from ragrt.results import Doc
from ragrt.runtime.contexts import (
    build_contexts,
    build_generator_inputs,
    question_strings,
    strip_title,
)
from ragrt.runtime.manifest import GenerationDefaults

DEFAULTS = GenerationDefaults(decoder_start_token_id=2, eos_token_id=2, pad_token_id=1)


def _docs():
    return [
        [
            Doc("1", '"Quoted title"', "Some  text with double  spaces.", 1.0),
            Doc("2", 'a"b"', "t", 0.5),
        ],
        [Doc("3", '""', "x", 0.1), Doc("4", "plain", " y ", 0.0)],
    ]


def test_strip_title_removes_one_quote_each_side():
    assert strip_title('"a"') == "a"
    assert strip_title('""a""') == '"a"'
    assert strip_title('"') == ""
    assert strip_title('a"b') == 'a"b'


def test_context_strings_match_reference_formula():
    docs = _docs()
    got = build_contexts(["who is it?", "q2"], docs, DEFAULTS)
    assert got == [
        "Quoted title / Some text with double spaces. // who is it?",
        'a"b / t // who is it?',
        " / x // q2",
        "plain / y // q2",
    ]
    t5 = GenerationDefaults(
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, prefix="question: "
    )
    assert build_contexts(["q"], [[docs[1][1]]], t5) == ["question: plain / y // q"]


def test_context_strings_match_transformers_postprocess_docs():
    """Same strings as RagRetriever.postprocess_docs (its cat_input_and_doc), run for real."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from transformers.models.rag.retrieval_rag import RagRetriever

    docs = _docs()
    cfg = SimpleNamespace(title_sep=" / ", doc_sep=" // ", max_combined_length=300)
    captured = {}

    class Tok:
        def batch_encode_plus(self, strings, **kw):
            captured["strings"] = strings
            return {"input_ids": None, "attention_mask": None}

    retr = RagRetriever.__new__(RagRetriever)
    retr.config, retr.generator_tokenizer = cfg, Tok()
    hf_docs = [{"title": [d.title for d in ds], "text": [d.text for d in ds]} for ds in docs]
    retr.postprocess_docs(hf_docs, ["who is it?", "q2"], "", 2)
    assert build_contexts(["who is it?", "q2"], docs, DEFAULTS) == captured["strings"]


def test_build_contexts_rejects_ragged_docs():
    with pytest.raises(InputError):
        build_contexts(["a", "b"], [[Doc("1", "t", "x", 0.0)]], DEFAULTS)
    with pytest.raises(InputError):
        build_contexts(["a", "b"], [[Doc("1", "t", "x", 0.0)], []], DEFAULTS)


class _Tok:
    """Whitespace tokenizer with TextTokenizer's encode_batch/decode contract."""

    pad_token_id = 1

    def encode_batch(self, texts, max_length, pad_to=None):
        rows = [[10 + len(w) for w in t.split()][:max_length] for t in texts]
        width = max(max(len(r) for r in rows), pad_to or 0)
        ids = np.full((len(rows), width), 1, np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if i >= 10)


def test_generator_inputs_pad_to_longest_and_truncate():
    gen = GenerationDefaults(
        decoder_start_token_id=2, eos_token_id=2, pad_token_id=1, max_combined_length=6
    )
    ids, mask = build_generator_inputs(
        ["q"], [[Doc("1", "t", "a b", 0), Doc("2", "t", "a b c d e f g", 0)]], _Tok(), gen
    )
    assert ids.shape == (2, 6) and mask.sum(1).tolist() == [6, 6]
    ids, mask = build_generator_inputs(
        ["q"], [[Doc("1", "t", "a", 0), Doc("2", "t", "a b", 0)]], _Tok(), gen
    )
    assert ids.shape == (2, 6) and mask.sum(1).tolist() == [5, 6]


def test_question_strings_drop_padding():
    ids = np.array([[12, 13, 1, 1], [14, 1, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    assert question_strings(_Tok(), ids, mask) == ["12 13", "14"]


def test_question_strings_with_real_bert_tokenizer():
    """Decoding the question-encoder ids lower-cases and cleans up spaces like transformers."""
    pytest.importorskip("transformers")
    from ragrt.export.fixtures import bert_tokenizer, minilm_path
    from ragrt.runtime.text import TextTokenizer

    hf = bert_tokenizer()
    tok = TextTokenizer(
        minilm_path() / "tokenizer.json", pad_token_id=0, clean_up=hf.clean_up_tokenization_spaces
    )
    qs = ["Who wrote Hamlet, and WHEN?", "What's the  capital of France ?"]
    enc = hf(qs, padding=True, return_tensors="np")
    assert question_strings(tok, enc["input_ids"], enc["attention_mask"]) == hf.batch_decode(
        enc["input_ids"], skip_special_tokens=True
    )
