"""all-MiniLM-L6-v2 on CPU: slimkit vs ONNX Runtime's own quantizer, side by side in one run.

    .venv/bin/python benchmarks/minilm.py [--steps 600] [--ffn 0.6] [--keep 0,1,2,3,4,5]

Variants (all embed the packaged English corpus, ~350 real sentences):
  torch_fp32       PyTorch eager fp32 (the fidelity reference)
  ort_fp32         plain ONNX export in ONNX Runtime (ORT_ENABLE_ALL): the speed baseline
  ort_int8_tensor  onnxruntime.quantization.quantize_dynamic, defaults (per-tensor weights)
  ort_int8_channel quantize_dynamic(per_channel=True)
  slimkit_fp32     slimkit's fp32 graph: padding-free (slimkit.transformers.packed: every layer
                   but attention runs on the real tokens only) and simplified (constant
                   reshapes, merged Q/K/V); shows how much speed comes from the graph alone
  slimkit_int8     SmoothQuant (FFN in/out) + measured sensitivity exclusion + dynamic
                   per-channel int8 of that packed, simplified export (ORT's runtime fusions
                   apply); the most sensitive unit keeps only its 4 largest (outlier) input
                   channels fp32 and the rest of it goes int8 (LLM.int8()-style split)
  slimkit_int8_token  slimkit_int8 with per-token int8 ranges (``per_token``: each token divided
                   by its own absolute maximum before its int8 MatMul) in the FFN units that an
                   emulated scan finds gain most (``per_token_share`` 0.8), instead of an fp32
                   unit (auto_exclude 0)
  slimkit_int8_padded  the same on the padded graph (packed=False; the default before packing)
  slimkit_int8_fused  the padded graph after ORT's offline transformer fusion (Attention ->
                   QAttention)
  slimkit_struct_int8  FFN neurons pruned (60 % by default, 1536 -> 640, removed one by one by
                   the Optimal Brain Surgeon error with least-squares compensation, scanned on
                   the even-indexed sentences + shipped distill_en text), distilled from fp32 on
                   the even-indexed sentences mixed 1:3 with the 2,000 distill_en sentences
                   (embedding + hidden-state + pairwise-similarity losses; dropout off; the
                   step whose weights score best on 20 % of those sentences and 256
                   distill_en lines, both held back from the scan and training, is kept),
                   then slimkit int8 without fp32 exclusions, SmoothQuant on the attention
                   output (folded into V, free) and FFN input only: on the 20 % student the FFN
                   output's explicit Mul per layer gained nothing (held-out 0.9815 both ways)
  slimkit_struct_light_int8  the same with 20 % of FFN neurons pruned (``--ffn-light``): the
                   other end of the speed-fidelity frontier (held-out Spearman after int8:
                   at 0.2 0.9834 (0.9815 when 35 task sentences alone chose the step: they
                   kept step 0), at 0.3 0.9740-0.9758 (older recipes), at 0.6 0.936)

Latency: ONNX Runtime / torch at 2 threads, batch 1 (single real sentences) and batch 32
(consecutive sentences padded to the longest), medians over rounds that take turns between the
variants (the machine is shared: compare ratios within one run). ``--timing blocks`` (default):
each variant serves all batches in a row per round, ORT's default thread spinning, as a
deployed model serves a stream; ``--timing calls``: one call per variant in turn, spinning off
(cold caches; see slimkit.transformers.bench). Every ORT variant has the same session options
(slimkit.transformers.bench.ort_session: level ALL, sequential, 2 intra-op threads). The x
columns are ratios of medians over all rounds; below the table each slimkit row's ratio is also
shown round by round (min / median / max), from each round's own medians. Fidelity
vs torch fp32 on all sentences, and on the odd-indexed half that neither the distilled student
nor slimkit's calibration ever saw ("held-out").
Writes benchmarks/results/minilm.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600, help="distillation steps")
    ap.add_argument("--distill-batch", type=int, default=32)
    ap.add_argument("--keep", default="", help="layers kept by the structural variant (all)")
    ap.add_argument("--ffn", type=float, default=0.6, help="FFN neuron fraction pruned")
    ap.add_argument(
        "--ffn-light",
        type=float,
        default=0.2,
        help="FFN fraction of a second, lighter structural row (0 = none)",
    )
    ap.add_argument("--heads", type=float, default=0.0, help="attention-head fraction pruned")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument(
        "--unlabelled",
        default="distill_en",
        help="extra distillation text (slimkit.data.unlabelled_text source, '' for none)",
    )
    ap.add_argument("--scan", type=int, default=1200, help="sentences for the FFN scan/refit")
    ap.add_argument("--share", type=float, default=0.75, help="unlabelled share of a batch")
    ap.add_argument("--auto-exclude", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timing", choices=["blocks", "calls"], default="blocks")
    args = ap.parse_args()

    import logging

    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimkit import atomic
    from slimkit.data import load_corpus
    from slimkit.transformers import (
        DistillConfig,
        EncoderInt8,
        EncoderStructural,
        SmoothConfig,
        compress_structure,
        embed,
        embedding_fidelity,
        load_encoder,
        quantize_encoder,
        sentence_encoder,
    )
    from slimkit.transformers.bench import (
        interleaved_latency,
        make_batches,
        ort_runner,
        torch_runner,
    )
    from slimkit.transformers.onnx_export import export_encoder

    logging.getLogger().setLevel(logging.ERROR)  # ORT quantizer's pre-processing advice
    torch.manual_seed(0)
    t_start = time.time()
    enc = load_encoder()
    tok, max_len = enc.tokenizer, enc.max_length
    corpus = load_corpus()
    train, held = corpus[0::2], corpus[1::2]
    module = sentence_encoder(enc)
    print(f"corpus: {len(corpus)} sentences ({len(train)} distillation, {len(held)} held-out)")

    tmp = Path(tempfile.mkdtemp(prefix="slimkit-minilm-"))
    paths: dict[str, Path] = {}
    notes: dict[str, dict] = {}

    export_encoder(module, tok, tmp / "plain.onnx", optimize=False, atol=1e-4, max_length=max_len)
    paths["ort_fp32"] = tmp / "plain.onnx"
    # slimkit's fp32 graph alone (packed + simplified): how much of the speed is not int8.
    export_encoder(
        module,
        tok,
        tmp / "sk_fp32.onnx",
        optimize=False,
        simplify=True,
        packed=True,
        atol=1e-4,
        max_length=max_len,
    )
    paths["slimkit_fp32"] = tmp / "sk_fp32.onnx"
    quantize_dynamic(str(tmp / "plain.onnx"), str(tmp / "ort_t.onnx"), weight_type=QuantType.QInt8)
    paths["ort_int8_tensor"] = tmp / "ort_t.onnx"
    quantize_dynamic(
        str(tmp / "plain.onnx"),
        str(tmp / "ort_c.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    paths["ort_int8_channel"] = tmp / "ort_c.onnx"

    int8 = EncoderInt8(auto_exclude=args.auto_exclude)  # optimize=False: plain export

    def slimkit_int8(name: str, model, cfg: EncoderInt8, **kw):
        """Quantize ``model`` with ``cfg`` (smoothing statistics and the sensitivity scan see
        only the even half) into the variant ``name``."""
        paths[name] = tmp / f"{name}.onnx"
        return quantize_encoder(
            model,
            tok,
            paths[name],
            cfg,
            train,
            num_heads=12,
            hidden_size=384,
            max_length=max_len,
            **kw,
        )

    t0 = time.time()
    res = slimkit_int8("slimkit_int8", module, int8, log=print)
    notes["slimkit_int8"] = {
        "excluded_units": res.excluded_units,
        "split_units": res.split_units,
        "fused_ops": res.fused_ops,
        "seconds": time.time() - t0,
    }

    # Per-token int8 ranges in the FFN units where they gain most (token_scale.py) instead of an
    # fp32 unit: more fidelity, a few more small ops.
    res_tok = slimkit_int8(
        "slimkit_int8_token", module, dataclasses.replace(int8, per_token=True, auto_exclude=0)
    )
    notes["slimkit_int8_token"] = {
        "excluded_units": res_tok.excluded_units,
        "split_units": res_tok.split_units,
        "token_scaled_units": res_tok.token_scaled_units,
    }

    # Same recipe on the padded graph (packed=False, the default until the packed export):
    # what skipping the padding tokens is worth at int8.
    slimkit_int8("slimkit_int8_padded", module, dataclasses.replace(int8, packed=False))

    # Same recipe after ORT's offline transformer fusion (fused Attention becomes QAttention),
    # which matches the padded graph only.
    slimkit_int8(
        "slimkit_int8_fused", module, dataclasses.replace(int8, optimize=True, packed=False)
    )

    keep = tuple(int(x) for x in args.keep.split(",")) if args.keep else ()
    # Students: no fp32 unit, and no smoothing Mul where it bought nothing (docstring).
    struct_int8 = dataclasses.replace(
        int8,
        auto_exclude=0,
        smooth=SmoothConfig(kinds=("attention.output.dense", "intermediate.dense")),
    )
    # The default struct row, then a lighter one: two points of the speed-fidelity frontier.
    structs = [("slimkit_struct_int8", args.ffn)]
    if args.ffn_light > 0:
        structs.append(("slimkit_struct_light_int8", args.ffn_light))
    for name, ffn in structs:
        t0 = time.time()
        student, sres = compress_structure(
            module,
            tok,
            EncoderStructural(
                keep_layers=keep,
                ffn_fraction=ffn,
                head_fraction=args.heads,
                scan_sentences=args.scan,
                unlabelled_text=args.unlabelled,
                distill=DistillConfig(
                    steps=args.steps,
                    batch_size=args.distill_batch,
                    lr=args.lr,
                    unlabelled_share=args.share,
                ),
            ),
            train,
            max_length=128,
            log=print,
        )
        # No fp32 exclusions: the pruning error dwarfs int8's, and a whole fp32 unit costs speed
        # (a run with auto_exclude=1 kept layer 4's Q/K/V fp32: 2.93x instead of ~3.1x).
        res2 = slimkit_int8(name, student, struct_int8, log=print)
        notes[name] = {
            "ffn_fraction": ffn,
            "kept_layers": sres.kept_layers,
            "ffn_kept": sres.ffn_kept,
            "heads_kept": {k: len(v) for k, v in sres.heads_kept.items()},
            "params": [sres.params_before, sres.params_after],
            "distill_loss": [sres.distill_loss_first, sres.distill_loss_last],
            "distill_best_step": sres.distill_best_step,
            "distill_val_spearman": sres.distill_val_spearman,
            "excluded_units": res2.excluded_units,
            "split_units": res2.split_units,
            "seconds": time.time() - t0,
        }

    # ---- fidelity: every variant's embeddings vs torch fp32 ----
    ref = embed(module, tok, corpus, max_length=max_len)
    odd = torch.arange(1, len(corpus), 2)
    rows: dict[str, dict] = {"torch_fp32": {"bytes": None}}
    runners = {"torch_fp32": torch_runner(module, 2)}
    for name, p in paths.items():
        runners[name] = ort_runner(p, 2, spinning=args.timing == "blocks")
        emb = embed(runners[name], tok, corpus, max_length=max_len)
        rows[name] = {
            "bytes": p.stat().st_size,
            "fidelity": embedding_fidelity(ref, emb).to_dict(),
            "fidelity_heldout": embedding_fidelity(ref[odd], emb[odd]).to_dict(),
        }
    rows["torch_fp32"]["bytes"] = (enc.folder / "model.safetensors").stat().st_size

    # ---- latency, interleaved ----
    for b, count in ((1, 64), (32, 10)):
        per_round: dict[str, list[float]] = {}
        lat = interleaved_latency(
            runners,
            make_batches(tok, corpus, b, count, max_len),
            rounds=args.rounds,
            mode=args.timing,
            per_round=per_round,
        )
        for name, ms in lat.items():
            rows[name][f"latency_ms_b{b}"] = ms
            # the same ratio round by round (ORT fp32's median of that round / this variant's)
            rows[name][f"speedup_b{b}_rounds"] = [
                o / v for o, v in zip(per_round["ort_fp32"], per_round[name], strict=True)
            ]

    base = rows["ort_fp32"]
    print()
    hdr = (
        f"{'variant':26s} {'MB':>7s} {'b1 ms':>7s} {'x':>5s} {'b32 ms':>8s} {'x':>5s} "
        f"{'cos mean':>8s} {'cos min':>8s} {'spearman':>8s} {'top5':>6s} {'sp held':>8s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        r["speedup_b1"] = base["latency_ms_b1"] / r["latency_ms_b1"]
        r["speedup_b32"] = base["latency_ms_b32"] / r["latency_ms_b32"]
        f = r.get("fidelity") or {
            "cosine_mean": 1.0,
            "cosine_min": 1.0,
            "spearman": 1.0,
            "topk_agreement": 1.0,
        }
        fh = r.get("fidelity_heldout") or {"spearman": 1.0}
        print(
            f"{name:26s} {r['bytes'] / 1e6:7.1f} {r['latency_ms_b1']:7.2f} {r['speedup_b1']:5.2f} "
            f"{r['latency_ms_b32']:8.1f} {r['speedup_b32']:5.2f} {f['cosine_mean']:8.4f} "
            f"{f['cosine_min']:8.4f} {f['spearman']:8.4f} {f['topk_agreement']:6.3f} {fh['spearman']:8.4f}"
        )
    print("\nratios are vs ort_fp32 (x = ort_fp32 latency / variant latency)")
    # How much the shared machine moved: the same ratio from each round's own medians.
    print(f"per-round x (min / median / max of {args.rounds} rounds), slimkit rows:")
    for name, r in rows.items():
        if name.startswith("slimkit"):
            spans = []
            for b in (1, 32):
                xs = sorted(r[f"speedup_b{b}_rounds"])
                spans.append(f"b{b} {xs[0]:.2f} / {xs[len(xs) // 2]:.2f} / {xs[-1]:.2f}")
            print(f"  {name:26s} {'   '.join(spans)}")
    # Targets (issue #8); speed must hold at both batch sizes, fidelity on all sentences and on
    # the held-out half (the worse of the two counts).
    targets = {
        "slimkit_int8": {"speedup": 2.0, "cosine_mean": 0.995, "spearman": 0.995},
        "slimkit_struct_int8": {"speedup": 3.0, "spearman": 0.98},
    }
    targets["slimkit_int8_token"] = targets["slimkit_int8"]
    if "slimkit_struct_light_int8" in rows:
        targets["slimkit_struct_light_int8"] = targets["slimkit_struct_int8"]
    verdicts = {}
    for name, t in targets.items():
        r = rows[name]
        speed = min(r["speedup_b1"], r["speedup_b32"])
        checks = [f"speedup min(b1, b32) {speed:.2f}x >= {t['speedup']}x: {speed >= t['speedup']}"]
        ok = speed >= t["speedup"]
        for key in ("cosine_mean", "spearman"):
            if key in t:
                v = min(r["fidelity"][key], r["fidelity_heldout"][key])
                checks.append(f"{key} {v:.4f} >= {t[key]}: {v >= t[key]}")
                ok = ok and v >= t[key]
        verdicts[name] = "MET" if ok else "MISSED"
        print(f"target {name}: {verdicts[name]} ({'; '.join(checks)})")
    for name, note in notes.items():
        print(f"{name}: {json.dumps(note)}")
    out = {
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "threads": 2,
        "timing": args.timing,
        "sentences": len(corpus),
        "rows": rows,
        "notes": notes,
        "targets": {"thresholds": targets, "verdicts": verdicts},
        "seconds": time.time() - t_start,
    }
    atomic.write_json(HERE / "results" / "minilm.json", out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwrote benchmarks/results/minilm.json in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
