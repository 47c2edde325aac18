"""A seq2seq generator (BART / T5) on ONNX Runtime: encoder once, then a cached decoder step.

The generator is three ONNX graphs written by optimum's ``text2text-generation-with-past``
export: ``encoder_model.onnx``, ``decoder_model.onnx`` (first step: computes the self- and
cross-attention caches) and ``decoder_with_past_model.onnx`` (later steps: one token in, the
self-attention cache grows by one).

The search code (``ragrt.runtime.generation``) only sees a :class:`DecoderStep`: ``step(tokens)`` gives
the next-token logits of every live row and ``select(idx)`` keeps/reorders rows (beam reorder,
dropping finished rows). Two implementations share that interface:

- :class:`CpuDecoderStep`: numpy feeds; the cache is a list of numpy arrays returned by ORT.
- :class:`CudaDecoderStep`: ONNX Runtime IO binding; caches stay on the GPU as ``OrtValue``s and
  row selection runs a tiny ``Gather`` graph on the device, so nothing but the logits crosses
  PCIe each step.

Each decoder row reads one encoder row (``src[row]``): RAG-Token decodes ``B * beams * n_docs``
rows over ``B * n_docs`` encoded contexts. The first step runs once per distinct encoder row
and is then expanded, and the cross-attention cache (the large part: ``rows x layers x 2 x
heads x context_len x head_dim``) is only gathered when a selection changes which encoder row a
decoder row reads - never on a beam reorder, which only permutes beams of the same context.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragrt.errors import ArtifactError, InputError
from ragrt.runtime.sessions import SessionOptions, open_session

_PRESENT = re.compile(r"^present\.(\d+)\.(decoder|encoder)\.(key|value)$")
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class DecoderStep(Protocol):
    """What the search loop needs from a decoder: logits for the next token of each live row."""

    @property
    def rows(self) -> int: ...

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row (``[rows]`` int64); return ``[rows, vocab]`` float32 logits."""
        ...

    def select(self, idx: np.ndarray) -> None:
        """Keep rows ``idx`` (indices into the current rows, repeats allowed), in that order."""
        ...


class Generator(Protocol):
    """What the RAG decoders need from a seq2seq generator (:class:`Seq2SeqGenerator`)."""

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Encoder states ``[N, L, d_model]`` of contexts ``ids``/``mask`` ``[N, L]``."""
        ...

    def decoder_step(
        self, states: np.ndarray, mask: np.ndarray, src: np.ndarray | None = None
    ) -> DecoderStep:
        """A fresh cached decoder whose row ``r`` attends to encoder row ``src[r]``."""
        ...

    def teacher_forced_logits(
        self, states: np.ndarray, mask: np.ndarray, src: np.ndarray, input_ids: np.ndarray
    ) -> np.ndarray:
        """Logits ``[N, T, V]`` of one uncached decoder pass over ``input_ids`` ``[N, T]``."""
        ...


class Seq2SeqGenerator:
    """BART/T5 generator over three ONNX Runtime sessions (see module docstring)."""

    def __init__(
        self,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        decoder_with_past_path: str | os.PathLike,
        opts: SessionOptions | None = None,
    ):
        self.opts = opts or SessionOptions()
        self.device = self.opts.device
        self.encoder = open_session(encoder_path, self.opts)
        self.decoder = open_session(decoder_path, self.opts)
        self.decoder_with_past = open_session(decoder_with_past_path, self.opts)
        self._check_graphs()

    @classmethod
    def from_spec(
        cls,
        spec: Any,
        root: str | os.PathLike,
        precision: str = "fp32",
        opts: SessionOptions | None = None,
    ) -> Seq2SeqGenerator:
        """From a manifest ``GeneratorSpec``: ``spec.onnx[precision]`` names the three files."""
        files = spec.onnx.get(precision)
        if not files:
            raise ArtifactError(
                f"generator {spec.name!r} has no {precision} ONNX files "
                f"(has {', '.join(spec.onnx) or 'none'}); re-export with --precision {precision}"
            )
        missing = [k for k in ("encoder", "decoder", "decoder_with_past") if k not in files]
        if missing:
            raise ArtifactError(
                f"generator {precision} entry lacks {', '.join(missing)}; re-run `ragrt export`"
            )
        r = Path(root)
        return cls(r / files["encoder"], r / files["decoder"], r / files["decoder_with_past"], opts)

    # -- graph introspection -----------------------------------------------------------
    def _check_graphs(self) -> None:
        enc_in = {i.name for i in self.encoder.get_inputs()}
        dec_in = {i.name: i for i in self.decoder.get_inputs()}
        past_in = {i.name for i in self.decoder_with_past.get_inputs()}
        dec_out = [o.name for o in self.decoder.get_outputs()]
        past_out = [o.name for o in self.decoder_with_past.get_outputs()]
        need = [
            ("encoder", enc_in, {"input_ids", "attention_mask"}),
            (
                "decoder",
                set(dec_in),
                {"input_ids", "encoder_hidden_states", "encoder_attention_mask"},
            ),
            ("decoder_with_past", past_in, {"input_ids", "encoder_attention_mask"}),
        ]
        for name, have, want in need:
            if not want <= have:
                raise ArtifactError(
                    f"generator {name} graph lacks inputs {sorted(want - have)}: not an optimum "
                    "text2text-generation-with-past export; re-run `ragrt export`"
                )
        layers = sorted({int(m.group(1)) for n in dec_out if (m := _PRESENT.match(n))})
        if not layers or dec_out[0] != "logits" or past_out[0] != "logits":
            raise ArtifactError("generator decoder graphs have no logits/present outputs")
        self.num_layers = len(layers)
        # cache order: per layer self key, self value, cross key, cross value
        self.self_names = [f"{i}.decoder.{kv}" for i in layers for kv in ("key", "value")]
        self.cross_names = [f"{i}.encoder.{kv}" for i in layers for kv in ("key", "value")]
        for n in self.self_names + self.cross_names:
            if "past_key_values." + n not in past_in or "present." + n not in dec_out:
                raise ArtifactError(f"generator decoder graphs lack cache tensor {n}; re-export")
        self.dec_out_names = dec_out
        self.past_out_names = past_out
        self.state_dtype = _ORT_FLOAT.get(dec_in["encoder_hidden_states"].type, np.float32)
        self.vocab_size = self.decoder.get_outputs()[0].shape[-1]

    # -- running -------------------------------------------------------------------------
    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Encoder states ``[N, L, d_model]`` for contexts ``ids``/``mask`` (int64 ``[N, L]``)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] == 0:
            raise InputError(
                f"context ids/mask must be equal non-empty [N, L], got {ids.shape}/{mask.shape}"
            )
        lens = right_padded_lengths(mask)
        buckets = length_buckets(lens) if lens is not None else [np.arange(len(ids))]
        if len(buckets) == 1 and (lens is None or lens.max() == ids.shape[1]):
            (states,) = self.encoder.run(
                ["last_hidden_state"], {"input_ids": ids, "attention_mask": mask}
            )
            return states
        assert lens is not None  # lengths unknown -> one bucket -> returned above
        # Each bucket runs at its own longest length; the rest stays zero (masked anyway).
        states = None
        for rows in buckets:
            n = int(lens[rows].max())
            feeds = {
                "input_ids": np.ascontiguousarray(ids[rows, :n]),
                "attention_mask": np.ascontiguousarray(mask[rows, :n]),
            }
            (part,) = self.encoder.run(["last_hidden_state"], feeds)
            if states is None:
                states = np.zeros(ids.shape + part.shape[2:], dtype=part.dtype)
            states[rows, :n] = part
        return states

    def decoder_step(
        self, states: np.ndarray, mask: np.ndarray, src: np.ndarray | None = None
    ) -> DecoderStep:
        """A fresh decoder whose row ``r`` attends to encoder row ``src[r]`` (default: all rows)."""
        src = np.arange(states.shape[0]) if src is None else np.asarray(src, dtype=np.int64)
        if self.device == "cpu":
            return CpuDecoderStep(self, states, mask, src)
        return CudaDecoderStep(self, states, mask, src)

    def teacher_forced_logits(
        self, states: np.ndarray, mask: np.ndarray, src: np.ndarray, input_ids: np.ndarray
    ) -> np.ndarray:
        """Logits ``[N, T, V]`` of a full (uncached) decoder pass over ``input_ids`` ``[N, T]``."""
        feeds = {
            "encoder_attention_mask": np.ascontiguousarray(mask[src], dtype=np.int64),
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "encoder_hidden_states": np.ascontiguousarray(states[src], dtype=self.state_dtype),
        }
        (logits,) = self.decoder.run(["logits"], feeds)
        return logits.astype(np.float32, copy=False)


BUCKET_SLACK = 0.1
"""A length bucket may hold up to 10% padding tokens: a few more, shorter encoder runs are
cheaper than encoding padding (the encoder is compute-bound and linear in tokens)."""


def right_padded_lengths(mask: np.ndarray) -> np.ndarray | None:
    """Row lengths when every row of ``mask`` is ones then zeros (else ``None``)."""
    lens = mask.sum(axis=1)
    if lens.min() < 1 or not np.array_equal(
        mask != 0, np.arange(mask.shape[1])[None, :] < lens[:, None]
    ):
        return None
    return lens


def length_buckets(lengths: np.ndarray, slack: float = BUCKET_SLACK) -> list[np.ndarray]:
    """Rows to encode together: longest first, a bucket grows while padding stays <= slack.

    Why: padding every context to the longest one makes the encoder (and its cost) scale with
    ``rows x longest``; encoding each bucket at its own length gives bit-identical states on
    the real positions (every op is row-wise or masked, and masked scores add exact zeros).
    """
    order = np.argsort(-lengths, kind="stable")
    buckets: list[list[int]] = []
    top = real = 0
    for r in order.tolist():
        n = int(lengths[r])
        if buckets and top * (len(buckets[-1]) + 1) <= (1 + slack) * (real + n):
            buckets[-1].append(r)
            real += n
        else:
            buckets.append([r])
            top = real = n
    return [np.array(sorted(b), dtype=np.int64) for b in buckets]


def _first_step_groups(src: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows to run and how to expand them back, when rows sharing ``src`` share their token."""
    _, first, inv = np.unique(src, return_index=True, return_inverse=True)
    if len(first) == len(src) or not np.array_equal(ids[first][inv], ids):
        return None
    return first, inv.reshape(-1)


class CpuDecoderStep:
    """Decoder step with numpy feeds; the cache is the list of arrays ORT returned."""

    def __init__(
        self, gen: Seq2SeqGenerator, states: np.ndarray, mask: np.ndarray, src: np.ndarray
    ):
        self.gen = gen
        self.states = states
        self.mask = np.asarray(mask, dtype=np.int64)
        self.src = src
        self.enc_mask = np.ascontiguousarray(self.mask[src])
        self.self_kv: list[np.ndarray] | None = None  # None until the first step
        self.cross_kv: list[np.ndarray] = []

    @property
    def rows(self) -> int:
        return len(self.src)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        g = self.gen
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1, 1))
        if ids.shape[0] != self.rows:
            raise InputError(f"decoder step got {ids.shape[0]} tokens for {self.rows} rows")
        if self.self_kv is None:
            groups = _first_step_groups(self.src, ids)
            run_rows = groups[0] if groups else np.arange(self.rows)
            outs = self._first_step(run_rows, ids[run_rows])
            expand = (lambda a: a[groups[1]]) if groups else (lambda a: a)
            self.self_kv = [expand(outs["present." + n]) for n in g.self_names]
            self.cross_kv = [expand(outs["present." + n]) for n in g.cross_names]
            logits = expand(outs["logits"][:, -1, :])
        else:
            feeds = {"encoder_attention_mask": self.enc_mask, "input_ids": ids}
            for n, a in zip(g.self_names, self.self_kv):
                feeds["past_key_values." + n] = a
            for n, a in zip(g.cross_names, self.cross_kv):
                feeds["past_key_values." + n] = a
            outs = dict(zip(g.past_out_names, g.decoder_with_past.run(None, feeds)))
            self.self_kv = [outs["present." + n] for n in g.self_names]
            logits = outs["logits"][:, -1, :]
        return logits.astype(np.float32, copy=False)

    def _first_step(self, run_rows: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        """First decoder step of ``run_rows``, in the encoder's length buckets.

        The first step computes every layer's cross-attention keys/values over the contexts;
        each bucket runs at its own longest length and the caches are padded back with zeros
        (masked, so later steps and logits keep the same bits), as in ``encode``.
        """
        g = self.gen
        mask = np.ascontiguousarray(self.enc_mask[run_rows])
        states = self.states[self.src[run_rows]]
        lens = right_padded_lengths(mask)
        buckets = length_buckets(lens) if lens is not None else [np.arange(len(run_rows))]
        if len(buckets) == 1 and (lens is None or lens.max() == mask.shape[1]):
            feeds = {
                "encoder_attention_mask": mask,
                "input_ids": ids,
                "encoder_hidden_states": np.ascontiguousarray(states, dtype=g.state_dtype),
            }
            return dict(zip(g.dec_out_names, g.decoder.run(None, feeds)))
        assert lens is not None  # lengths unknown -> one bucket -> returned above
        outs: dict[str, np.ndarray] = {}
        for rows in buckets:
            n = int(lens[rows].max())
            feeds = {
                "encoder_attention_mask": np.ascontiguousarray(mask[rows, :n]),
                "input_ids": np.ascontiguousarray(ids[rows]),
                "encoder_hidden_states": np.ascontiguousarray(
                    states[rows, :n], dtype=g.state_dtype
                ),
            }
            for name, a in zip(g.dec_out_names, g.decoder.run(None, feeds)):
                cross = name.endswith((".encoder.key", ".encoder.value"))
                if name not in outs:
                    shape = (len(ids), *a.shape[1:])
                    if cross:  # [rows, heads, context, head_dim]
                        shape = (*shape[:2], mask.shape[1], *shape[3:])
                    outs[name] = np.zeros(shape, a.dtype)
                if cross:
                    outs[name][rows, :, :n] = a
                else:
                    outs[name][rows] = a
        return outs

    def select(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == self.rows and np.array_equal(idx, np.arange(self.rows)):
            return
        new_src = self.src[idx]
        if self.self_kv is not None:
            self.self_kv = [a[idx] for a in self.self_kv]
            if not np.array_equal(new_src, self.src):
                self.cross_kv = [a[idx] for a in self.cross_kv]
        if not np.array_equal(new_src, self.src):
            self.enc_mask = np.ascontiguousarray(self.enc_mask[idx])
        self.src = new_src


# -- CUDA: IO binding, caches on the device ------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):  # varint field
        return _varint(num << 3) + _varint(payload)
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def _tensor_type(elem_type: int, rank: int) -> bytes:
    shape = b"".join(_field(1, _field(2, f"d{i}".encode())) for i in range(rank))  # dim_param
    return _field(1, _field(1, elem_type) + _field(2, shape))  # TypeProto.tensor_type


def gather_model_bytes(count: int, rank: int, elem_type: int = 1) -> bytes:
    """A serialized ONNX model ``y_i = Gather(x_i, idx, axis=0)`` for ``count`` tensors.

    Built by hand (protobuf wire format) because the runtime has no ``onnx`` package; used on
    CUDA to reorder KV caches without leaving the device. ``elem_type`` 1 = float, 10 = fp16.
    """
    nodes = b"".join(
        _field(
            1,
            _field(1, f"x{i}".encode())
            + _field(1, b"idx")
            + _field(2, f"y{i}".encode())
            + _field(4, b"Gather"),
        )
        for i in range(count)
    )
    inputs = b"".join(
        _field(11, _field(1, f"x{i}".encode()) + _field(2, _tensor_type(elem_type, rank)))
        for i in range(count)
    )
    inputs += _field(11, _field(1, b"idx") + _field(2, _tensor_type(7, 1)))  # int64 [n]
    outputs = b"".join(
        _field(12, _field(1, f"y{i}".encode()) + _field(2, _tensor_type(elem_type, rank)))
        for i in range(count)
    )
    graph = nodes + _field(2, b"ragrt_gather") + inputs + outputs
    opset = _field(1, b"") + _field(2, 13)
    return _field(1, 8) + _field(8, opset) + _field(7, graph)  # ir_version, opset_import, graph


class RowGather:
    """Gathers rows of several same-dtype tensors at once with one ORT session (any device)."""

    def __init__(self, count: int, rank: int, dtype: Any, opts: SessionOptions):
        import onnxruntime as ort

        from ragrt.runtime.sessions import providers_for

        elem = 10 if np.dtype(dtype) == np.float16 else 1
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(
            gather_model_bytes(count, rank, elem), sess_options=so, providers=providers_for(opts)
        )
        self.count = count
        self.out_names = [f"y{i}" for i in range(count)]

    def run_device(
        self, values: list[Any], idx: np.ndarray, device: str, device_id: int
    ) -> list[Any]:
        import onnxruntime as ort

        b = self.sess.io_binding()
        for i, v in enumerate(values):
            b.bind_ortvalue_input(f"x{i}", v)
        b.bind_ortvalue_input(
            "idx",
            ort.OrtValue.ortvalue_from_numpy(np.asarray(idx, dtype=np.int64), device, device_id),
        )
        for n in self.out_names:
            b.bind_output(n, device, device_id)
        self.sess.run_with_iobinding(b)
        return b.get_outputs()


class CudaDecoderStep:
    """Decoder step on CUDA with IO binding (not exercised on CPU-only machines).

    Decisions: encoder states and masks are uploaded once; presents are bound to device
    memory and fed back as the next step's past without a host copy; only logits come back
    to the host (the search runs in numpy). Row selection (beam reorder, dropping finished
    rows, the first-step expansion) runs a hand-built ``Gather`` graph on the device; the
    cross-attention cache is gathered only when the rows' encoder sources change.
    """

    def __init__(
        self, gen: Seq2SeqGenerator, states: np.ndarray, mask: np.ndarray, src: np.ndarray
    ):
        import onnxruntime as ort

        self.ort = ort
        self.gen = gen
        self.dev, self.dev_id = "cuda", gen.opts.device_id
        self.states = np.ascontiguousarray(states, dtype=gen.state_dtype)
        self.mask = np.asarray(mask, dtype=np.int64)
        self.src = src
        self.enc_mask = self._up(np.ascontiguousarray(self.mask[src]))
        self.self_kv: list[Any] | None = None  # None until the first step
        self.cross_kv: list[Any] = []
        n = 2 * gen.num_layers
        self._gather_kv = RowGather(n, 4, gen.state_dtype, gen.opts)

    @property
    def rows(self) -> int:
        return len(self.src)

    def _up(self, a: np.ndarray) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.dev, self.dev_id)

    def _gather(self, values: list[Any], idx: np.ndarray) -> list[Any]:
        return self._gather_kv.run_device(values, idx, self.dev, self.dev_id)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        g = self.gen
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        if self.self_kv is None:
            groups = _first_step_groups(self.src, ids)
            run_rows = groups[0] if groups else np.arange(self.rows)
            sess, b = g.decoder, g.decoder.io_binding()
            b.bind_ortvalue_input("encoder_attention_mask", self._up(self.mask[self.src[run_rows]]))
            b.bind_ortvalue_input("input_ids", self._up(ids[run_rows]))
            b.bind_ortvalue_input(
                "encoder_hidden_states", self._up(self.states[self.src[run_rows]])
            )
            names = g.dec_out_names
        else:
            sess, b = g.decoder_with_past, g.decoder_with_past.io_binding()
            b.bind_ortvalue_input("encoder_attention_mask", self.enc_mask)
            b.bind_ortvalue_input("input_ids", self._up(ids))
            for n, v in zip(g.self_names, self.self_kv):
                b.bind_ortvalue_input("past_key_values." + n, v)
            for n, v in zip(g.cross_names, self.cross_kv):
                b.bind_ortvalue_input("past_key_values." + n, v)
            names = g.past_out_names
        b.bind_output("logits", "cpu")
        for n in names[1:]:
            b.bind_output(n, self.dev, self.dev_id)
        sess.run_with_iobinding(b)
        outs = dict(zip(names, b.get_outputs()))
        logits = outs["logits"].numpy()[:, -1, :]
        self.self_kv = [outs["present." + n] for n in g.self_names]
        if not self.cross_kv:
            self.cross_kv = [outs["present." + n] for n in g.cross_names]
            if groups:
                self.self_kv = self._gather(self.self_kv, groups[1])
                self.cross_kv = self._gather(self.cross_kv, groups[1])
                logits = logits[groups[1]]
        return logits.astype(np.float32, copy=False)

    def select(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == self.rows and np.array_equal(idx, np.arange(self.rows)):
            return
        new_src = self.src[idx]
        changed = not np.array_equal(new_src, self.src)
        if self.self_kv is not None:
            self.self_kv = self._gather(self.self_kv, idx)
            if changed:
                self.cross_kv = self._gather(self.cross_kv, idx)
        if changed:
            self.enc_mask = self._up(self.mask[new_src])
        self.src = new_src
