"""Unit tests of ragrt.runtime.generation and ragrt.runtime.generator (fast; parity lives in test_rag_parity)."""

from __future__ import annotations

import numpy as np
import pytest

from ragrt.errors import InputError
from ragrt.runtime.generation import GenerationParams
from ragrt.runtime.generation.processors import (
    ForcedBOS,
    ForcedEOS,
    MinNewTokens,
    NoRepeatNGram,
    build_processors,
)
from ragrt.runtime.generation.search import beam_search, greedy, log_softmax, topk
from ragrt.runtime.generation.streaming import FINISHED
from ragrt.runtime.manifest import GenerationDefaults

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    from gen_fixtures import RecordingStreamer
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.gen_fixtures import RecordingStreamer

BASE = dict(decoder_start_token_id=2, eos_token_id=2, pad_token_id=1)


# -- params ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        dict(num_beams=0),
        dict(num_beams=2, num_return_sequences=3),
        dict(max_new_tokens=0),
        dict(min_new_tokens=-1),
        dict(early_stopping="sometimes"),
        dict(n_docs=0),
        dict(max_new_tokens=3, min_new_tokens=4),
        dict(num_beams=1.5),
    ],
)
def test_params_validation_raises_input_error(bad):
    with pytest.raises(InputError):
        GenerationParams(**BASE, **bad)


def test_params_from_defaults_maps_reference_lengths():
    d = GenerationDefaults(
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        bos_token_id=0,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        max_length=20,
        min_length=5,
        num_beams=4,
        no_repeat_ngram_size=3,
        early_stopping=True,
        n_docs=5,
        exclude_bos_score=False,
    )
    p = GenerationParams.from_defaults(d)
    assert (p.max_new_tokens, p.min_new_tokens) == (19, 4)
    assert (p.max_length, p.min_length) == (20, 5)
    assert p.num_beams == 4 and p.early_stopping is True and p.forced_bos_token_id == 0
    # generate() always rescores with exclude_bos_score=True; the config value is for the loss
    assert p.exclude_bos_score is True
    q = GenerationParams.from_defaults(d, num_beams=1, num_return_sequences=None, max_new_tokens=7)
    assert (q.num_beams, q.num_return_sequences, q.max_new_tokens) == (1, 1, 7)
    with pytest.raises(InputError):
        GenerationParams.from_defaults(d, beams=3)


# -- processors vs transformers' --------------------------------------------------------------
def test_processors_match_transformers():
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(0)
    seqs = rng.integers(0, 6, size=(5, 9))
    scores = rng.normal(size=(5, 12)).astype(np.float32)
    pairs = [
        (NoRepeatNGram(2), lp.NoRepeatNGramLogitsProcessor(2)),
        (NoRepeatNGram(3), lp.NoRepeatNGramLogitsProcessor(3)),
        (NoRepeatNGram(1), lp.NoRepeatNGramLogitsProcessor(1)),
        (MinNewTokens(1, 9, 3), lp.MinNewTokensLengthLogitsProcessor(1, 9, 3)),
        (ForcedEOS(10, 4), lp.ForcedEOSTokenLogitsProcessor(10, 4)),
    ]
    for ours, ref in pairs:
        for n in (1, 2, 9):
            got = ours(seqs[:, :n], scores.copy())
            want = ref(torch.from_numpy(seqs[:, :n]), torch.from_numpy(scores.copy())).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{type(ours).__name__} len {n}")
    for n in (1, 2):
        got = ForcedBOS(5)(seqs[:, :n], scores.copy())
        want = lp.ForcedBOSTokenLogitsProcessor(5)(
            torch.from_numpy(seqs[:, :n]), torch.from_numpy(scores.copy())
        ).numpy()
        np.testing.assert_array_equal(got, want)


def test_no_repeat_ngram_bans_exactly_the_repeating_token():
    seqs = np.array([[2, 5, 6, 5]])
    out = NoRepeatNGram(2)(seqs, np.zeros((1, 8), np.float32))
    assert np.isneginf(out[0, 6]) and np.isfinite(np.delete(out[0], 6)).all()


def test_build_processors_order_and_content():
    p = GenerationParams(
        **BASE,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        min_new_tokens=2,
        no_repeat_ngram_size=3,
        max_new_tokens=5,
    )
    procs = build_processors(p)
    assert [type(x) for x in procs] == [NoRepeatNGram, MinNewTokens, ForcedBOS, ForcedEOS]
    assert procs[-1].max_length == 6  # forced EOS at the 5th new token
    assert build_processors(GenerationParams(**BASE)) == []


# -- search on a scripted step model ----------------------------------------------------------
class TableModel:
    """Scores from a fixed table indexed by the row's previous token; records selections."""

    def __init__(self, table: np.ndarray, rows: int):
        self.table = table
        self.rows = rows
        self.selected: list[np.ndarray] = []
        self.calls: list[int] = []

    def step(self, tokens):
        assert len(tokens) == self.rows
        self.calls.append(len(tokens))
        return self.table[np.asarray(tokens)].astype(np.float32)

    def select(self, idx):
        idx = np.asarray(idx)
        self.selected.append(idx)
        self.rows = len(idx)


def _chain_table(vocab=8, eos=2):
    """Token t prefers t+1; the row started at 3 reaches EOS quickly, 5 never does."""
    t = np.full((vocab, vocab), -5.0)
    for a in range(vocab):
        t[a, (a + 1) % vocab] = 5.0
    t[4, eos] = 6.0  # 3 -> 4 -> eos
    return t


def test_greedy_drops_finished_rows_and_streams():
    table = _chain_table()
    # two rows with different "start" tokens via a custom first step
    p = GenerationParams(decoder_start_token_id=3, eos_token_id=2, pad_token_id=1, max_new_tokens=6)

    class TwoStarts(TableModel):
        first = True

        def step(self, tokens):
            if self.first:
                self.first = False
                tokens = np.array([3, 5])
            return super().step(tokens)

    m = TwoStarts(table, 2)
    rec = RecordingStreamer()
    hyps = greedy(m, 2, p, streamer=rec)
    assert hyps[0].token_ids == [4, 2]  # 3 -> 4 -> EOS
    assert hyps[1].token_ids == [6, 7, 0, 1, 2]  # 5 -> 6 -> 7 -> 0 -> 1 -> 2(eos)
    assert m.calls == [2, 2, 1, 1, 1]  # row 0 dropped after its EOS
    assert rec.steps[0] == [4, 6] and rec.steps[2] == [FINISHED, 0] and rec.ended
    # score = sum of log-probs of the chosen tokens
    lp = log_softmax(table.astype(np.float32))
    assert hyps[0].score == pytest.approx(lp[3, 4] + lp[4, 2], rel=1e-6)


def test_greedy_respects_max_new_tokens():
    p = GenerationParams(decoder_start_token_id=5, eos_token_id=2, pad_token_id=1, max_new_tokens=3)
    hyps = greedy(TableModel(_chain_table(), 1), 1, p)
    assert hyps[0].token_ids == [6, 7, 0]


def test_beam_search_returns_ranked_distinct_hypotheses_and_reorders_rows():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(10, 10)) * 3
    p = GenerationParams(
        decoder_start_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=5,
        num_beams=3,
        num_return_sequences=3,
    )
    m = TableModel(table, 6)
    out = beam_search(m, 2, p)
    assert len(out) == 2 and all(len(h) == 3 for h in out)
    for hyps in out:
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.token_ids) for h in hyps}) == 3
        lp = log_softmax(table.astype(np.float32))
        for h in hyps:  # score = sum log-probs / generated_len ** 1.0
            toks = [0] + h.token_ids
            total = sum(lp[a, b] for a, b in zip(toks, toks[1:]))
            assert h.score == pytest.approx(total / len(h.token_ids), abs=1e-4)
    assert all(len(s) == 6 for s in m.selected)


def test_beam_search_matches_exhaustive_search_for_short_outputs():
    """With num_beams >= vocab and early_stopping='never', lp=0, beam search is exact."""
    rng = np.random.default_rng(3)
    V = 4
    table = rng.normal(size=(V, V)) * 2
    p = GenerationParams(
        decoder_start_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=3,
        num_beams=V,
        num_return_sequences=1,
        length_penalty=0.0,
        early_stopping="never",
    )
    best = beam_search(TableModel(table, V), 1, p)[0][0]
    lp = log_softmax(table.astype(np.float32))
    import itertools

    cands = []
    for n in (1, 2, 3):
        for toks in itertools.product(range(V), repeat=n):
            if 2 in toks[:-1] or (n < 3 and toks[-1] != 2):
                continue
            seq = (0, *toks)
            cands.append((sum(lp[a, b] for a, b in zip(seq, seq[1:])), list(toks)))
    assert best.token_ids == max(cands)[1]


def test_topk_is_sorted_descending():
    x = np.array([[0.1, 0.5, -1.0, 0.5, 3.0]], dtype=np.float32)
    assert topk(x, 3).tolist() == [[4, 1, 3]]
    assert topk(x, 5).tolist() == [[4, 1, 3, 0, 2]]


# -- generator: hand-built gather graph and row selection -------------------------------------
def test_hand_built_gather_graph_runs_on_cpu():
    import onnxruntime as ort

    from ragrt.runtime.generator import gather_model_bytes

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(4, 2, 3, 5)).astype(np.float32) for _ in range(3)]
    idx = np.array([3, 3, 0])
    sess = ort.InferenceSession(gather_model_bytes(3, 4), providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    feeds["idx"] = idx
    out = sess.run([f"y{i}" for i in range(3)], feeds)
    for a, o in zip(arrays, out):
        np.testing.assert_array_equal(o, a[idx])


class _FakeGen:
    """Stands in for Seq2SeqGenerator: records decoder runs; cache = per-row row ids."""

    num_layers = 1
    self_names = ["0.decoder.key", "0.decoder.value"]
    cross_names = ["0.encoder.key", "0.encoder.value"]
    dec_out_names = ["logits"] + ["present." + n for n in self_names + cross_names]
    past_out_names = ["logits"] + ["present." + n for n in self_names]
    state_dtype = np.float32

    def __init__(self):
        self.runs: list[tuple[str, int]] = []
        gen = self

        class Sess:
            def __init__(self, name):
                self.name = name

            def run(self, _names, feeds):
                n = feeds["input_ids"].shape[0]
                gen.runs.append((self.name, n))
                if self.name == "decoder":
                    enc = feeds["encoder_hidden_states"][:, 0, 0]  # encoder row id
                    kv = np.broadcast_to(enc[:, None, None, None], (n, 1, 1, 1)).copy()
                    logits = np.tile(enc[:, None, None], (1, 1, 3)).astype(np.float32)
                    return [logits, kv, kv, kv + 100, kv + 100]
                past = feeds["past_key_values.0.decoder.key"]
                cross = feeds["past_key_values.0.encoder.key"] - 100
                assert np.array_equal(past[:, 0, 0, 0], cross[:, 0, 0, 0]), "cache rows out of sync"
                logits = np.tile(past[:, :, 0, :1], (1, 1, 3)).reshape(n, 1, 3)
                return [logits.astype(np.float32), past, past]

        self.decoder = Sess("decoder")
        self.decoder_with_past = Sess("decoder_with_past")


def test_cpu_decoder_dedups_first_step_and_gathers_cross_cache_only_when_sources_change():
    from ragrt.runtime.generator import CpuDecoderStep

    gen = _FakeGen()
    states = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 4, 2), np.float32)
    mask = np.ones((3, 4), np.int64)
    src = np.repeat(np.arange(3), 2)  # 3 contexts x 2 beams
    d = CpuDecoderStep(gen, states, mask, src)
    logits = d.step(np.zeros(6, np.int64))
    assert gen.runs == [("decoder", 3)]  # once per distinct context
    assert logits[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    cross_before = d.cross_kv[0]
    d.select(np.array([1, 0, 3, 3, 4, 5]))  # beam reorder within each context
    assert d.cross_kv[0] is cross_before
    d.step(np.zeros(6, np.int64))
    d.select(np.array([4, 5]))  # drop the first two contexts' rows
    assert d.cross_kv[0] is not cross_before and d.rows == 2
    out = d.step(np.zeros(2, np.int64))
    assert out[:, 0].tolist() == [2, 2]
    assert d.enc_mask.shape == (2, 4)


def test_decode_stack_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ragrt.runtime.generator, ragrt.runtime.contexts\n"
        "import ragrt.runtime.generation.rag_token, ragrt.runtime.generation.rag_sequence\n"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
