"""Doing less work without changing results: length-bucketed encoder, cached marginalization,
session options; and the CTranslate2 benchmark peer."""

from __future__ import annotations

import numpy as np
import pytest

from ragrt.runtime.generation.search import log_softmax, logsumexp
from ragrt.runtime.generator import length_buckets, right_padded_lengths


def test_length_buckets_cover_rows_once_within_slack():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lens = rng.integers(5, 300, size=int(rng.integers(1, 40)))
        buckets = length_buckets(lens, slack=0.1)
        rows = np.sort(np.concatenate(buckets))
        assert np.array_equal(rows, np.arange(len(lens)))
        for b in buckets:
            assert lens[b].max() * len(b) <= 1.1 * lens[b].sum() + 1e-9
    assert len(length_buckets(np.array([100, 100, 100]))) == 1
    assert [b.tolist() for b in length_buckets(np.array([50, 200, 190]))] == [[1, 2], [0]]


def test_right_padded_lengths():
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    assert right_padded_lengths(mask).tolist() == [2, 3]
    assert right_padded_lengths(np.array([[0, 1, 1], [1, 1, 1]])) is None  # left padding
    assert right_padded_lengths(np.array([[0, 0, 0], [1, 1, 1]])) is None  # empty row


@pytest.fixture(scope="module")
def fp32_generator(rag_bart_art):
    from ragrt.runtime import manifest
    from ragrt.runtime.generator import Seq2SeqGenerator

    m = manifest.load(rag_bart_art)
    return Seq2SeqGenerator.from_spec(m.generator, m.root, "fp32")


def _contexts(lengths: list[int], width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.ones((len(lengths), width), dtype=np.int64)  # pad id 1
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(4, 900, n)
        ids[r, 0], ids[r, n - 1] = 0, 2  # <s> ... </s>
        mask[r, :n] = 1
    return ids, mask


class _PaddedEncoder:
    """The generator as before: one encoder run over all contexts padded to the longest."""

    def __init__(self, gen) -> None:
        self.gen = gen

    def encode(self, ids, mask):
        return self.gen.encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def decoder_step(self, *args):
        return self.gen.decoder_step(*args)


def test_bucketed_encoder_is_bit_identical_and_decodes_the_same(fp32_generator):
    from ragrt.runtime.generation import rag_token
    from ragrt.runtime.generation.params import GenerationParams

    gen = fp32_generator
    lens = [12, 60, 57, 33, 61, 20]
    ids, mask = _contexts(lens, 64)
    assert len(length_buckets(np.array(lens))) > 1
    got = gen.encode(ids, mask)
    ref = _PaddedEncoder(gen).encode(ids, mask)
    for r, n in enumerate(lens):
        assert np.array_equal(got[r, :n], ref[r, :n])  # same bits on every real position
    assert not got[:, max(lens) :].any()  # never encoded: zeros (masked downstream)
    params = GenerationParams(
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=10,
        min_new_tokens=10,
        n_docs=3,
    )
    scores = np.array([[3.0, 2.5, 1.0], [0.5, 0.4, 0.45]], dtype=np.float32)
    a = rag_token.generate(gen, ids, mask, scores, params)
    b = rag_token.generate(_PaddedEncoder(gen), ids, mask, scores, params)
    assert [h[0].token_ids for h in a] == [h[0].token_ids for h in b]
    assert [h[0].score for h in a] == [h[0].score for h in b]
    assert len({t for h in a for t in h[0].token_ids}) > 3, "fixture must decode diverse tokens"


def test_bucketed_first_step_keeps_the_bits(fp32_generator):
    """First step in length buckets (caches padded with zeros) == one padded run, and the
    next step over those caches == the next step over the padded run's caches."""
    gen = fp32_generator
    lens = [12, 60, 57, 33]
    ids, mask = _contexts(lens, 64, seed=5)
    states = gen.encode(ids, mask)
    tok0 = np.full(4, 2, dtype=np.int64)
    step = gen.decoder_step(states, mask)
    got0 = step.step(tok0)
    feeds = {
        "encoder_attention_mask": mask,
        "input_ids": tok0[:, None],
        "encoder_hidden_states": states,
    }
    ref = dict(zip(gen.dec_out_names, gen.decoder.run(None, feeds)))
    assert np.array_equal(got0, ref["logits"][:, -1])
    for n, kv in zip(gen.cross_names, step.cross_kv):
        for r, L in enumerate(lens):
            assert np.array_equal(kv[r, :, :L], ref["present." + n][r, :, :L])
    tok1 = np.argmax(got0, axis=-1)
    got1 = step.step(tok1)
    past = {"encoder_attention_mask": mask, "input_ids": tok1[:, None]}
    for n in gen.self_names + gen.cross_names:
        past["past_key_values." + n] = ref["present." + n]
    ref1 = gen.decoder_with_past.run(["logits"], past)[0]
    assert np.array_equal(got1, ref1[:, -1])


@pytest.mark.parametrize("rows", [5, 20])
def test_marginalize_has_the_bits_of_log_softmax_then_logsumexp(rows):
    from ragrt.runtime.generation.rag_token import RagTokenStep

    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 3001)) * 7).astype(np.float32)
    x[0, :5] = -np.inf
    doc = log_softmax(rng.standard_normal((rows // 5, 5)).astype(np.float32), axis=1)
    ref = logsumexp(log_softmax(x).reshape(rows // 5, 5, -1) + doc[:, :, None], axis=1)
    step = RagTokenStep(None, doc)
    for _ in range(2):  # scratch arrays are reused across steps
        got = step.marginalize(x)
        assert got.dtype == np.float32 and np.array_equal(got, ref)


def test_sessions_do_not_spin_unless_asked(rag_bart_art):
    from ragrt.runtime.sessions import SessionOptions, open_session

    path = rag_bart_art / "generator" / "fp32" / "encoder_model.onnx"
    key = "session.intra_op.allow_spinning"
    quiet = open_session(path, SessionOptions(intra_op_threads=2))
    assert quiet.get_session_options().get_session_config_entry(key) == "0"
    spin = open_session(path, SessionOptions(intra_op_threads=2, spinning=True))
    assert spin.get_session_options().get_session_config_entry(key) == "1"
    assert quiet.get_session_options().intra_op_num_threads == 2
    daz = "session.set_denormal_as_zero"
    assert quiet.get_session_options().get_session_config_entry(daz) == "1"
    plain = open_session(path, SessionOptions(denormal_as_zero=False))
    assert plain.get_session_options().get_session_config_entry(daz) == "0"


_DENORMAL_ATTENTION = """
import sys, numpy as np
from onnx import TensorProto, helper
from ragrt.runtime.sessions import SessionOptions, open_session
g = helper.make_graph(
    [helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])],
    "attn",
    [helper.make_tensor_value_info("s", TensorProto.FLOAT, [8, 64, 64]),
     helper.make_tensor_value_info("v", TensorProto.FLOAT, [8, 64, 32])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64, 32])],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
path = sys.argv[2] + "/attn.onnx"
open(path, "wb").write(m.SerializeToString())
sess = open_session(path, SessionOptions(intra_op_threads=1, denormal_as_zero=sys.argv[1] == "1"))
rng = np.random.default_rng(0)
s = (rng.standard_normal((8, 64, 64)) * 40).astype(np.float32)  # peaked: denormal probabilities
v = rng.standard_normal((8, 64, 32)).astype(np.float32)
np.save(sys.argv[2] + "/y" + sys.argv[1] + ".npy", sess.run(None, {"s": s, "v": v})[0])
"""


def test_denormals_as_zero_keep_the_bits(tmp_path):
    """Flushing denormals (fresh process each: ONNX Runtime sets the calling thread once)."""
    import subprocess
    import sys

    for flag in ("0", "1"):
        subprocess.run([sys.executable, "-c", _DENORMAL_ATTENTION, flag, str(tmp_path)], check=True)
    off, on = np.load(tmp_path / "y0.npy"), np.load(tmp_path / "y1.npy")
    assert np.array_equal(off, on)


def test_ctranslate2_peer_decodes_like_ragrt(rag_bart_ckpt, fp32_generator, tmp_path):
    pytest.importorskip("ctranslate2")
    from ragrt.benchmarks import ctranslate2_peer as cp
    from ragrt.runtime.generation.params import GenerationParams
    from ragrt.runtime.generation.search import greedy

    gen_dir = cp.generator_folder(rag_bart_ckpt["rag"], tmp_path / "generator")
    assert (gen_dir / "config.json").is_file()
    lens = [30, 18, 25, 40]
    ids, mask = _contexts(lens, 40, seed=3)
    params = GenerationParams(
        decoder_start_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        max_new_tokens=8,
        min_new_tokens=8,
    )
    states = fp32_generator.encode(ids, mask)
    ref = [h.token_ids for h in greedy(fp32_generator.decoder_step(states, mask), 4, params)]
    fp32 = cp.Ct2Generator(cp.convert(gen_dir, tmp_path / "ct2-fp32", "fp32"), "fp32", 1)
    got = fp32.generate(ids, mask, 8).token_ids
    assert got == ref
    assert len({t for s in ref for t in s}) > 4, "fixture must decode diverse tokens"
    int8 = cp.Ct2Generator(cp.convert(gen_dir, tmp_path / "ct2-int8", "int8"), "int8", 1)
    out = int8.generate(ids, mask, 8).token_ids
    assert [len(s) for s in out] == [8] * 4


def test_cgroup_cpu_quota_caps_threads(tmp_path):
    from ragrt.runtime.sessions import cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None
