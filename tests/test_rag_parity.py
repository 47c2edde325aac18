"""Token-exact parity of ragrt's torch-free decoding with transformers 4.57 (fp32).

Both sides get the same ``context_input_ids`` / ``context_attention_mask`` / ``doc_scores``
(right-padded to the longest context, not to 300: the mask hides the pads, so this only
changes float rounding). The reference's ``max_length``/``min_length`` count the decoder start
token: ragrt's ``max_new_tokens = N`` is the reference's ``max_length = N + 1``.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from gen_fixtures import (
        GenFixture,
        RecordingStreamer,
        as_sequence_fixture,
        assert_diverse,
        assert_same_ranked,
        build_fixture,
        pad_hypotheses,
        random_contexts,
    )
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.gen_fixtures import (
        GenFixture,
        RecordingStreamer,
        as_sequence_fixture,
        assert_diverse,
        assert_same_ranked,
        build_fixture,
        pad_hypotheses,
        random_contexts,
    )

torch = pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

from ragrt.runtime.generation import rag_sequence, rag_token  # noqa: E402
from ragrt.runtime.generation.search import beam_fill_value  # noqa: E402
from ragrt.runtime.generation.streaming import FINISHED  # noqa: E402

MAX_NEW = 11


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The reference runs single-threaded: on 2 shared cores torch's spinning workers only
    slow it down (restored after each test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def gen_root(tmp_path_factory):
    return tmp_path_factory.mktemp("gen_parity")


@pytest.fixture(scope="session")
def token_fixtures(gen_root) -> dict[str, GenFixture]:
    return {fam: build_fixture(gen_root, fam, "token") for fam in ("bart", "t5")}


@pytest.fixture(scope="session")
def sequence_fixtures(token_fixtures) -> dict[str, GenFixture]:
    return {fam: as_sequence_fixture(fx) for fam, fx in token_fixtures.items()}


def _reference_token(
    fx: GenFixture, ids, mask, scores, **kw
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference sequences and (beam search only) their scores."""
    with torch.no_grad():
        out = fx.model.generate(
            context_input_ids=torch.from_numpy(ids),
            context_attention_mask=torch.from_numpy(mask),
            doc_scores=torch.from_numpy(scores),
            n_docs=scores.shape[1],
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
    seq_scores = getattr(out, "sequences_scores", None)
    return out.sequences.numpy(), None if seq_scores is None else seq_scores.numpy()


def _check(fx, hyps, p, ref, ref_scores) -> None:
    ours = _ours_padded(fx, hyps, p, ref.shape[1])
    our_scores = np.array([h.score for q in hyps for h in q]) if ref_scores is not None else None
    ties = assert_same_ranked(ours, ref, our_scores, ref_scores, per_item=p.num_return_sequences)
    assert ties <= len(ours) // 2, f"{ties} tie-broken hypotheses: more than fp32 noise explains"


def _ours_padded(fx: GenFixture, hyps, params, width: int) -> np.ndarray:
    rows = [h.token_ids for q in hyps for h in q]
    fill = params.pad_token_id if params.num_beams == 1 else beam_fill_value(params)
    return pad_hypotheses(rows, params.decoder_start_token_id, fill, width)


def _ref_kwargs(p) -> dict:
    return dict(
        num_beams=p.num_beams,
        num_return_sequences=p.num_return_sequences,
        max_length=p.max_new_tokens + 1,
        min_length=p.min_new_tokens + 1 if p.min_new_tokens else 0,
        no_repeat_ngram_size=p.no_repeat_ngram_size,
        length_penalty=p.length_penalty,
        early_stopping=p.early_stopping,
        forced_bos_token_id=p.forced_bos_token_id,
        forced_eos_token_id=p.forced_eos_token_id,
    )


# (batch, n_docs) pairs: every value of each, 4 combinations per family and mode
SHAPES = [(1, 1), (3, 5), (3, 1), (1, 5)]


@pytest.mark.parametrize("family", ["bart", "t5"])
@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("batch,n_docs", SHAPES)
def test_rag_token_matches_transformers(token_fixtures, family, num_beams, batch, n_docs):
    fx = token_fixtures[family]
    ids, mask, scores = random_contexts(fx, batch, n_docs, seed=batch * 10 + n_docs)
    p = fx.params(
        max_new_tokens=MAX_NEW,
        min_new_tokens=3,
        no_repeat_ngram_size=3,
        num_beams=num_beams,
        num_return_sequences=2 if num_beams > 1 else 1,
        n_docs=n_docs,
    )
    ref, ref_scores = _reference_token(fx, ids, mask, scores, **_ref_kwargs(p))
    assert_diverse(ref)
    hyps = rag_token.generate(fx.generator, ids, mask, scores, p)
    assert len(hyps) == batch and all(len(q) == p.num_return_sequences for q in hyps)
    _check(fx, hyps, p, ref, ref_scores)


@pytest.mark.parametrize(
    "opts",
    [
        dict(early_stopping=True, length_penalty=1.0),
        dict(early_stopping="never", length_penalty=2.0),
        dict(early_stopping=False, length_penalty=0.5, num_return_sequences=4),
        dict(early_stopping=False, length_penalty=-1.0, forced_bos_token_id=None),
    ],
    ids=["early-true", "never-lp2", "lp0.5-ret4", "neg-lp-no-forced-bos"],
)
def test_rag_token_beam_options(token_fixtures, opts):
    fx = token_fixtures["bart"]
    ids, mask, scores = random_contexts(fx, 2, 3, seed=7)
    p = fx.params(max_new_tokens=MAX_NEW, num_beams=4, n_docs=3, **opts)
    ref, ref_scores = _reference_token(fx, ids, mask, scores, **_ref_kwargs(p))
    assert_diverse(ref)
    hyps = rag_token.generate(fx.generator, ids, mask, scores, p)
    _check(fx, hyps, p, ref, ref_scores)


def test_rag_token_greedy_streams_tokens(token_fixtures):
    fx = token_fixtures["bart"]
    ids, mask, scores = random_contexts(fx, 3, 2, seed=3)
    p = fx.params(max_new_tokens=MAX_NEW, n_docs=2)
    rec = RecordingStreamer()
    hyps = rag_token.generate(fx.generator, ids, mask, scores, p, streamer=rec)
    assert rec.ended and len(rec.steps) == max(len(h[0].token_ids) for h in hyps)
    for q, h in enumerate(hyps):
        streamed = [t[q] for t in rec.steps if t[q] != FINISHED]
        assert streamed == h[0].token_ids


# -- RAG-Sequence ----------------------------------------------------------------------------
def _reference_sequence(fx: GenFixture, ids, mask, scores, *, pass_mask: bool, **kw):
    """``RagSequenceForGeneration.generate``'s loop, per question: (candidates[top], scores).

    With ``pass_mask`` the per-doc ``generator.generate`` gets ``attention_mask=context_mask``
    where 4.57 passes ``attention_mask=None`` (the quirk in RAG_REFERENCE.md). In 4.57
    ``generate`` then infers the mask from pad ids (pad != eos for both fixtures), so both
    variants attend to the same tokens; ragrt always uses the mask.
    """
    model, n_docs = fx.model, scores.shape[1]
    nret = kw.pop("num_return_sequences")
    ids_t, mask_t, scores_t = map(torch.from_numpy, (ids, mask, scores))
    out = []
    with torch.no_grad():
        for i in range(scores.shape[0]):
            ctx, ctx_mask = (
                ids_t[i * n_docs : (i + 1) * n_docs],
                mask_t[i * n_docs : (i + 1) * n_docs],
            )
            cands = model.generator.generate(
                ctx,
                attention_mask=ctx_mask if pass_mask else None,
                num_return_sequences=kw["num_beams"],
                **kw,
            )
            cands = torch.stack(list({str(k.tolist()): k for k in cands}.values()))
            c = cands.shape[0]
            res = model(
                context_input_ids=ctx.repeat(c, 1),
                context_attention_mask=ctx_mask.repeat(c, 1),
                doc_scores=scores_t[i : i + 1].repeat(c, 1),
                labels=cands,
                exclude_bos_score=True,
                n_docs=n_docs,
            )
            top = (-res["loss"]).topk(nret)[1]
            out.append((cands[top].numpy(), (-res["loss"])[top].numpy()))
    return out


def _seq_params(fx, num_beams, n_docs):
    return fx.params(
        max_new_tokens=MAX_NEW,
        min_new_tokens=2,
        no_repeat_ngram_size=3,
        num_beams=num_beams,
        num_return_sequences=2 if num_beams > 1 else 1,
        n_docs=n_docs,
    )


def _check_sequence(fx, ids, mask, scores, p, ref) -> None:
    cands = rag_sequence.candidates(fx.generator, ids, mask, scores, p)
    hyps = rag_sequence.generate(fx.generator, ids, mask, scores, p)
    assert_diverse(np.concatenate([r[:, 1:] for r, _ in ref], axis=None)[None, :])
    ties = 0
    for c, (ref_ids, ref_scores), h in zip(cands, ref, hyps):
        ties += assert_same_ranked(
            c.ids[c.best], ref_ids, c.scores[c.best], ref_scores, len(ref_ids)
        )
        assert [x.token_ids for x in h] == [c.token_ids[i] for i in c.best]
        for x, i in zip(h, c.best):  # generate() strips the decoder start and the fill
            assert list(c.ids[i, 1 : 1 + len(x.token_ids)]) == x.token_ids
    assert ties <= len(ref), f"{ties} tie-broken RAG-Sequence hypotheses"


@pytest.mark.parametrize("family", ["bart", "t5"])
@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("batch,n_docs", [(1, 5), (3, 2)])
def test_rag_sequence_matches_reference_procedure(
    sequence_fixtures, family, num_beams, batch, n_docs
):
    """Against the reference procedure with the context mask passed to the per-doc generate."""
    fx = sequence_fixtures[family]
    ids, mask, scores = random_contexts(fx, batch, n_docs, seed=100 + batch * 10 + n_docs)
    p = _seq_params(fx, num_beams, n_docs)
    ref = _reference_sequence(fx, ids, mask, scores, pass_mask=True, **_ref_kwargs(p))
    _check_sequence(fx, ids, mask, scores, p, ref)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_rag_sequence_matches_transformers_generate(sequence_fixtures, family):
    """``RagSequenceForGeneration.generate`` itself: it passes ``attention_mask=None`` to the
    per-doc generate, and 4.57 then infers the mask from pad ids (pad != eos here), so ragrt's
    masked decoding gives the same ids.

    ``n_docs`` is the config's 5: 4.57's rescoring forward does not pass ``n_docs`` on.
    """
    fx = sequence_fixtures[family]
    n_docs = fx.model.config.n_docs
    ids, mask, scores = random_contexts(fx, 1, n_docs, seed=5)
    p = _seq_params(fx, 4, n_docs)
    with torch.no_grad():
        full = fx.model.generate(
            context_input_ids=torch.from_numpy(ids),
            context_attention_mask=torch.from_numpy(mask),
            doc_scores=torch.from_numpy(scores),
            n_docs=n_docs,
            **_ref_kwargs(p),
        ).numpy()
    assert_diverse(full)
    (c,) = rag_sequence.candidates(fx.generator, ids, mask, scores, p)
    np.testing.assert_array_equal(c.ids[c.best], full)
