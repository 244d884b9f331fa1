"""all-MiniLM-L6-v2 int8: what slimkit's graph simplification (graph_simplify.py) buys at batch 1/32.

    .venv/bin/python benchmarks/minilm_graph.py [--rounds 5] [--repeats 3]

Variants (ONNX Runtime, 2 threads, slimkit.transformers.bench.ort_session options):
  ort_fp32              plain export (optimize=False): the baseline of benchmarks/minilm.py
  fp32_simplified       the same graph after simplify_model() (defaults)
  ort_int8_channel      quantize_dynamic(per_channel=True) of the plain export
  ortq_simp_nomerge     ... of the simplified graph without the Q/K/V merge
  ortq_simp             ... of the simplified graph (defaults: Q/K/V merged)
  ortq_simp_heads       ... plus merge_heads=True (one head Reshape for Q/K/V)
  ortq_simp_mha         ... plus attention=True (ORT MultiHeadAttention, fp32 core)
  slimkit_int8_plain    slimkit int8 (SmoothQuant + 1 sensitivity exclusion), simplify=False
  slimkit_int8          the same with simplify=True (the EncoderInt8 default)

Latency: every variant timed round-robin (bench.interleaved_latency) on real corpus sentences,
batch 1 (64 single sentences) and batch 32 (10 batches); that is repeated ``--repeats`` times
and the table shows the median over repeats of each variant's median ms and of its ratio to
ort_fp32 within the same repeat. Fidelity: cosine of each variant's embeddings to PyTorch fp32
on all corpus sentences. Writes benchmarks/results/minilm_graph.txt (the printed table).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--auto-exclude", type=int, default=1)
    args = ap.parse_args()

    import onnx
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimkit import atomic
    from slimkit.data import load_corpus
    from slimkit.transformers import (
        EncoderInt8,
        embed,
        embedding_fidelity,
        load_encoder,
        quantize_encoder,
        sentence_encoder,
    )
    from slimkit.transformers.bench import interleaved_latency, make_batches, ort_runner
    from slimkit.transformers.graph_simplify import simplify_model
    from slimkit.transformers.onnx_export import export_encoder

    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    t_start = time.time()
    load0 = os.getloadavg()[0]
    enc = load_encoder()
    tok, max_len = enc.tokenizer, enc.max_length
    corpus = load_corpus()
    module = sentence_encoder(enc)
    tmp = Path(tempfile.mkdtemp(prefix="slimkit-minilm-graph-"))
    paths: dict[str, Path] = {}
    lines: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    export_encoder(module, tok, tmp / "plain.onnx", optimize=False, atol=1e-4, max_length=max_len)
    paths["ort_fp32"] = tmp / "plain.onnx"
    plain = onnx.load(str(tmp / "plain.onnx"))
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # MultiHeadAttention outputs
    simplified = {
        "fp32_simplified": {},
        "simp_nomerge": {"merge_matmuls": False},
        "simp": {},
        "simp_heads": {"merge_heads": True},
        "simp_mha": {"attention": True},
    }
    for name, kw in simplified.items():
        model, res = simplify_model(plain, **kw)
        onnx.save(model, str(tmp / f"{name}.onnx"))
        say(f"{name}: {res.nodes_before} -> {res.nodes_after} nodes, {res.to_dict()}")
    paths["fp32_simplified"] = tmp / "fp32_simplified.onnx"
    for name, src in [
        ("ort_int8_channel", "plain"),
        ("ortq_simp_nomerge", "simp_nomerge"),
        ("ortq_simp", "simp"),
        ("ortq_simp_heads", "simp_heads"),
        ("ortq_simp_mha", "simp_mha"),
    ]:
        quantize_dynamic(
            str(tmp / f"{src}.onnx"),
            str(tmp / f"{name}.onnx"),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options=extra,
        )
        paths[name] = tmp / f"{name}.onnx"

    int8 = EncoderInt8(auto_exclude=args.auto_exclude)
    for name, simplify in (("slimkit_int8_plain", False), ("slimkit_int8", True)):
        t0 = time.time()
        res = quantize_encoder(
            module,
            tok,
            tmp / f"{name}.onnx",
            dataclasses.replace(int8, simplify=simplify),
            corpus[0::2],
            num_heads=12,
            hidden_size=384,
            max_length=max_len,
        )
        paths[name] = tmp / f"{name}.onnx"
        say(
            f"{name}: excluded {res.excluded_units}, simplified {res.simplified is not None}, "
            f"{time.time() - t0:.0f} s"
        )

    ref = embed(module, tok, corpus, max_length=max_len)
    runners = {name: ort_runner(p, 2) for name, p in paths.items()}
    fid = {
        name: embedding_fidelity(ref, embed(run, tok, corpus, max_length=max_len))
        for name, run in runners.items()
    }
    ops = {}
    for name, p in paths.items():
        ops[name] = len(onnx.load(str(p), load_external_data=False).graph.node)

    ms: dict[int, dict[str, list[float]]] = {1: {n: [] for n in paths}, 32: {n: [] for n in paths}}
    ratio: dict[int, dict[str, list[float]]] = {
        1: {n: [] for n in paths},
        32: {n: [] for n in paths},
    }
    loads = []
    for _ in range(args.repeats):
        for b, count in ((1, 64), (32, 10)):
            lat = interleaved_latency(
                runners, make_batches(tok, corpus, b, count, max_len), rounds=args.rounds
            )
            for n, v in lat.items():
                ms[b][n].append(v)
                ratio[b][n].append(lat["ort_fp32"] / v)
        loads.append(os.getloadavg()[0])

    med = statistics.median
    say()
    say(
        f"printed by `.venv/bin/python benchmarks/minilm_graph.py {' '.join(sys.argv[1:])}`".strip()
    )
    say(
        f"all-MiniLM-L6-v2, {len(corpus)} corpus sentences, 2 threads, onnxruntime "
        f"{onnxruntime.__version__}; {args.repeats} repeats x {args.rounds} interleaved rounds "
        f"(b1: 64 sentences, b32: 10 batches); load avg {load0:.1f} at start, "
        f"{', '.join(f'{x:.1f}' for x in loads)} after each repeat"
    )
    hdr = (
        f"{'variant':20s} {'nodes':>5s} {'b1 ms':>7s} {'x fp32':>6s} {'b32 ms':>7s} {'x fp32':>6s}"
        f" {'b1 x per repeat':>17s} {'b32 x per repeat':>17s} {'cos mean':>8s} {'cos min':>8s}"
        f" {'spearman':>8s}"
    )
    say(hdr)
    say("-" * len(hdr))
    for n in paths:
        f = fid[n]
        say(
            f"{n:20s} {ops[n]:5d} {med(ms[1][n]):7.2f} {med(ratio[1][n]):6.2f} "
            f"{med(ms[32][n]):7.1f} {med(ratio[32][n]):6.2f} "
            f"{'/'.join(f'{r:.2f}' for r in ratio[1][n]):>17s} "
            f"{'/'.join(f'{r:.2f}' for r in ratio[32][n]):>17s} "
            f"{f.cosine_mean:8.4f} {f.cosine_min:8.4f} {f.spearman:8.4f}"
        )
    say()
    say("x fp32 = ort_fp32 ms / variant ms within one repeat (median over repeats); nodes = ONNX")
    say("nodes in the file (before ORT's own session-time fusions)")
    for a, b in (
        ("slimkit_int8", "slimkit_int8_plain"),
        ("ortq_simp", "ort_int8_channel"),
        ("ortq_simp", "ortq_simp_nomerge"),
    ):
        rel = [f"b{bs} {med([x / y for x, y in zip(ms[bs][a], ms[bs][b])]):.3f}" for bs in (1, 32)]
        say(f"{a} / {b} latency: {', '.join(rel)}")
    say(f"({time.time() - t_start:.0f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    atomic.write_bytes(HERE / "results" / "minilm_graph.txt", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
