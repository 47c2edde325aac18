"""RAG-Sequence fast decoding against an independent re-implementation on transformers.

The reference here runs the generator's own ``generate`` once per doc (as
``RagSequenceForGeneration.generate`` does), takes each hypothesis's log-probability from
transformers' ``compute_transition_scores`` (not from ragrt's beam-score arithmetic), merges
identical hypotheses across docs and scores them by ``logsumexp`` over the docs that produced
them of ``log_softmax(doc_scores) + log p(y | x, z)`` (Lewis et al. 2020, section 2.5).
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from gen_fixtures import assert_diverse, build_fixture, random_contexts
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.gen_fixtures import assert_diverse, build_fixture, random_contexts

torch = pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from ragrt.errors import InputError  # noqa: E402
from ragrt.runtime.generation import GenerationParams, rag_sequence  # noqa: E402

MAX_NEW = 10


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("fast_decoding"), "bart", "sequence")


def reference_fast(fx, ids, mask, scores, p) -> list[tuple[list[tuple[int, ...]], np.ndarray]]:
    """Per question: candidates in first-occurrence order (doc, then beam) and their scores."""
    gen = fx.model.generator
    n_docs = scores.shape[1]
    doc_lp = torch.log_softmax(torch.from_numpy(scores).double(), dim=1).numpy()
    kw = dict(
        num_beams=p.num_beams,
        num_return_sequences=p.num_beams,
        max_length=p.max_new_tokens + 1,
        min_length=p.min_new_tokens + 1 if p.min_new_tokens else 0,
        no_repeat_ngram_size=p.no_repeat_ngram_size,
        forced_bos_token_id=p.forced_bos_token_id,
        forced_eos_token_id=p.forced_eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    out = []
    with torch.no_grad():
        for b in range(scores.shape[0]):
            terms: dict[tuple[int, ...], list[float]] = {}
            for d in range(n_docs):
                row = b * n_docs + d
                o = gen.generate(
                    torch.from_numpy(ids[row : row + 1]),
                    attention_mask=torch.from_numpy(mask[row : row + 1]),
                    **kw,
                )
                if p.num_beams > 1:
                    steps = gen.compute_transition_scores(o.sequences, o.scores, o.beam_indices)
                    lengths = (o.beam_indices != -1).sum(dim=1)
                else:
                    steps = gen.compute_transition_scores(
                        o.sequences, o.scores, normalize_logits=True
                    )
                    lengths = torch.full((o.sequences.shape[0],), steps.shape[1])
                for seq, st, n in zip(o.sequences, steps, lengths):
                    toks = tuple(seq[1 : 1 + int(n)].tolist())
                    terms.setdefault(toks, []).append(
                        doc_lp[b, d] + float(st[: int(n)].double().sum())
                    )
            cands = list(terms)
            out.append((cands, np.array([np.logaddexp.reduce(terms[c]) for c in cands])))
    return out


@pytest.mark.parametrize(
    "num_beams,extra",
    [(1, {}), (4, dict(min_new_tokens=2, no_repeat_ngram_size=2, length_penalty=1.5))],
    ids=["greedy", "beam4"],
)
def test_fast_decoding_matches_independent_reimplementation(fx, num_beams, extra):
    ids, mask, scores = random_contexts(fx, 2, 3, seed=11)
    # question 0 reads one passage twice (docs 0 and 2): their hypotheses must merge
    ids[2], mask[2] = ids[0], mask[0]
    p = fx.params(
        max_new_tokens=MAX_NEW,
        num_beams=num_beams,
        num_return_sequences=min(2, num_beams),
        n_docs=3,
        sequence_decoding="fast",
        **extra,
    )
    ref = reference_fast(fx, ids, mask, scores, p)
    ours = rag_sequence.fast_candidates(fx.generator, ids, mask, scores, p)
    assert_diverse(np.array([list(c) + [0] * (MAX_NEW - len(c)) for c in ref[0][0]]))
    for c, (ref_cands, ref_scores) in zip(ours, ref):
        assert [tuple(t) for t in c.token_ids] == ref_cands
        np.testing.assert_allclose(c.scores, ref_scores, atol=2e-3, rtol=1e-4)
        assert list(c.best) == list(np.argsort(-ref_scores, kind="stable")[: len(c.best)])
    # merged: question 0 has fewer candidates than searches produced, question 1 (three
    # different passages) has them all
    assert len(ours[0].token_ids) == 2 * num_beams and len(ours[1].token_ids) == 3 * num_beams
    hyps = rag_sequence.generate(fx.generator, ids, mask, scores, p)
    for h, c in zip(hyps, ours):
        assert [x.token_ids for x in h] == [c.token_ids[i] for i in c.best]
        assert [x.score for x in h] == pytest.approx([float(c.scores[i]) for i in c.best])


def test_fast_and_thorough_share_candidates_but_not_scores(fx):
    ids, mask, scores = random_contexts(fx, 2, 3, seed=12)
    p = fx.params(max_new_tokens=MAX_NEW, num_beams=3, num_return_sequences=3, n_docs=3)
    thorough = rag_sequence.candidates(fx.generator, ids, mask, scores, p)
    fast = rag_sequence.fast_candidates(fx.generator, ids, mask, scores, p)
    for t, f in zip(thorough, fast):
        assert t.token_ids == f.token_ids  # same searches, same deduplication
        assert not np.allclose(t.scores, f.scores)  # no rescoring pass


def test_sequence_decoding_is_validated():
    with pytest.raises(InputError, match="sequence_decoding"):
        GenerationParams(
            decoder_start_token_id=2, eos_token_id=2, pad_token_id=1, sequence_decoding="quick"
        )
