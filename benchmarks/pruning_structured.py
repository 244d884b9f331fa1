"""Structured channel pruning: Torch-Pruning's MagnitudePruner vs slimkit, side by side.

One process, same data (mnist5k, 28x28), same dense start point per model, same MAC target and
the same fine-tuning for both tools:

- dense: ``--epochs`` epochs of AdamW (lr ``--lr``, cosine); the weights are cached per model,
  seed and recipe as safetensors in ``--cache-dir``, so a rerun skips dense training;
- ``torch-pruning``: ``tp.pruner.MagnitudePruner`` + ``tp.importance.MagnitudeImportance(p=1)``,
  uniform per-layer ratio, classifier ignored;
- ``slimkit``: ``sk.prune_(model, ChannelPruning(criterion=--criterion, scope=--scope, ...),
  data=calib)``; ``scope="group"`` scores l1/l2 over every tensor coupled to a channel (as
  Torch-Pruning's group importance), ``"filter"`` over the root filters only;
- ``--min-channels`` (slimkit): every pruned group keeps at least this many channels; ORT's
  blocked (NCHWc) conv layout is 16 channels wide on AVX-512 machines and a conv fed 8 channels
  falls back to the plain NCHW path, so 16 can be faster than 8 at batch 1;
- both keep channel counts a multiple of ``--round-to`` and get the same fine-tuning:
  ``--ft-epochs`` full epochs of AdamW (lr ``--ft-lr``, cosine), cross-entropy, per seed; with
  ``--kd-alpha`` > 0 both tools' loss is ``alpha * T^2 * KL(student/T || dense/T) + (1 - alpha) *
  CE`` with the dense model as teacher (T = ``--kd-temperature``).

Each tool's pruning ratio is the smallest on a grid (0.05, 0.075, ...) whose MACs are <= dense /
``--mac-target``; the MACs each tool lands at are printed (rounding makes them differ a little).
Accuracy is the mean over ``--seeds`` fine-tuning seeds from the same pruned model; MACs, params
and ONNX Runtime latency (batch 1 and 64, one thread) are measured on the exported files. The
dense and both pruned files of a model are timed interleaved: ``--rounds`` rounds, each timing
every file in turn, median of ``--runs`` runs at batch 1 (a tenth at batch 64), so a slow spell
of a shared machine slows all three alike (timed one after another, minutes apart, two identical
architectures once differed 1.5x at batch 1).

Each model runs at its own defaults (``PER_MODEL_DEFAULTS``: the settings #4's targets were met
and recorded at; the run prints them); a flag given on the command line applies to every model.

    .venv/bin/python benchmarks/pruning_structured.py            # see --help for the budget
    .venv/bin/python benchmarks/pruning_structured.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("SLIMKIT_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimkit as sk  # noqa: E402
from slimkit import atomic  # noqa: E402
from slimkit.export.onnx import to_onnx  # noqa: E402
from slimkit.metrics import count_macs, count_params  # noqa: E402
from slimkit.pruning import ChannelPruning  # noqa: E402
from slimkit.training import TrainConfig, evaluate_accuracy, train  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "pruning_structured.json"
CLASSIFIER = {"resnet": "fc", "mobilenetv2": "classifier"}

# Each model's default settings: those under which #4's targets were met and recorded (ResNet
# 3.5x fewer MACs, MobileNetV2 2.0x with 16-channel floors: its 8-channel convs leave ORT's
# blocked layout). A flag given on the command line overrides them for every model.
PER_MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "resnet": {
        "mac_target": 3.5,
        "round_to": 8,
        "round_mode": "nearest",
        "min_channels": 1,
        "ft_epochs": 12,
        "runs": 1000,
    },
    "mobilenetv2": {
        "mac_target": 2.0,
        "round_to": 16,
        "round_mode": "nearest",
        "min_channels": 16,
        "ft_epochs": 12,
        "runs": 1000,
    },
}


def tp_prune(
    model: nn.Module, ratio: float, example: torch.Tensor, classifier: str, round_to: int
) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[model.get_submodule(classifier)],
        round_to=round_to if round_to > 1 else None,
    )
    pruner.step()
    return model


def fit_ratio(
    dense: nn.Module,
    prune: Callable[[nn.Module, float], nn.Module],
    example: torch.Tensor,
    target_macs: float,
) -> tuple[float, nn.Module]:
    """The smallest ratio on a 0.025 grid whose MACs are <= ``target_macs``: (ratio, model).

    A scan, not a bisection: with ``round_to`` > 1 the MACs are a step function of the ratio and
    not monotonic (Torch-Pruning at round_to=4 reaches the target again near ratio 0.78 with a
    tenth of the parameters), so the first crossing is taken: prune no more than needed.
    """
    for k in range(2, 37):  # ratios 0.05 .. 0.9
        ratio = k * 0.025
        candidate = prune(copy.deepcopy(dense), ratio)
        if count_macs(candidate, example) <= target_macs:
            return ratio, candidate
    raise SystemExit(f"no ratio <= 0.9 reaches {target_macs:.0f} MACs")


def measure(model: nn.Module, example: torch.Tensor, tmp: Path, tag: str) -> dict:
    """Export ``model`` and count it; latency is timed later, for all rows of a model at once
    (time_interleaved)."""
    model.eval()
    path = tmp / f"{tag}.onnx"
    export = to_onnx(model, path, example)
    return {
        "macs": count_macs(model, example),
        "params": count_params(model),
        "onnx_bytes": export.bytes,
        "onnx_path": str(path),
    }


def time_interleaved(rows: dict[str, dict], example: torch.Tensor, runs: int, rounds: int) -> None:
    """ORT latency of every row's ONNX file (1 thread), in ``rounds`` rounds that each time
    every file in turn (order rotated), so a slow spell of this shared machine hits all rows
    alike instead of whichever was timed in it; each row's median over all its timed runs is
    stored as ``ort_ms_b1`` / ``ort_ms_b64``. Batch 1 gets ``runs`` runs, batch 64 a tenth."""
    from slimkit.export.ort import make_session

    tags = list(rows)
    sessions = {t: make_session(rows[t].pop("onnx_path"), threads=1) for t in tags}
    x1 = example[:1].numpy().astype(np.float32)
    inputs = {1: x1, 64: np.repeat(x1, 64, axis=0)}
    per_round = {1: max(1, runs // rounds), 64: max(1, runs // 10 // rounds)}
    times: dict[tuple[str, int], list[float]] = {(t, b): [] for t in tags for b in inputs}
    for t in tags:  # warm-up: first runs allocate
        for x in inputs.values():
            for _ in range(3):
                sessions[t].run(None, {sessions[t].get_inputs()[0].name: x})
    for r in range(rounds):
        for t in tags[r % len(tags) :] + tags[: r % len(tags)]:
            sess, name = sessions[t], sessions[t].get_inputs()[0].name
            for b, x in inputs.items():
                for _ in range(per_round[b]):
                    t0 = time.perf_counter()
                    sess.run(None, {name: x})
                    times[(t, b)].append(1e3 * (time.perf_counter() - t0))
    for t in tags:
        rows[t]["ort_ms_b1"] = statistics.median(times[(t, 1)])
        rows[t]["ort_ms_b64"] = statistics.median(times[(t, 64)])


def dense_model(name: str, data, args) -> nn.Module:
    """The trained dense model, from the safetensors cache when this recipe ran before."""
    from safetensors.torch import load_file, save_file

    dense = sk.build_model(name, seed=0)
    cache = Path(args.cache_dir) / f"{name}-seed0-e{args.epochs}-lr{args.lr}.safetensors"
    if cache.exists():
        dense.load_state_dict(load_file(cache))
        print(f"[{name}] dense weights from {cache}")
        return dense.eval()
    train(dense, data, TrainConfig(epochs=args.epochs, lr=args.lr, seed=0), description=name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, cache)
    return dense.eval()


def kd_loss(teacher: nn.Module, alpha: float, temperature: float):
    """Logit distillation from the dense model, the same for both tools (None: plain CE)."""
    if alpha <= 0:
        return None
    import torch.nn.functional as F

    teacher.eval()

    def loss(_model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor):
        with torch.no_grad():
            soft_t = F.softmax(teacher(x) / temperature, 1)  # (B, classes)
        kl = F.kl_div(F.log_softmax(logits / temperature, 1), soft_t, reduction="batchmean")
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(logits, y)

    return loss


def run_model(name: str, data, args, tmp: Path) -> dict:
    example = data.example_input(1)
    t0 = time.time()
    dense = dense_model(name, data, args)
    dense_acc = evaluate_accuracy(dense, data.test)
    dense_macs = count_macs(dense, example)
    target = dense_macs / args.mac_target
    print(
        f"[{name}] dense ready in {time.time() - t0:.0f}s, acc {dense_acc:.4f}, MACs {dense_macs}",
        flush=True,
    )

    criterion = ChannelPruning(
        ratio=0.5,
        criterion=args.criterion,
        global_=args.global_,
        max_layer_ratio=0.9,
        min_channels=args.min_channels,
        calib_batches=4,
        round_to=args.round_to,
        round_mode=args.round_mode,
        scope=args.scope,
    )

    def sk_prune(m: nn.Module, ratio: float) -> nn.Module:
        cfg = ChannelPruning.from_dict({**criterion.to_dict(), "ratio": ratio})
        return sk.prune_(m, cfg, data=data.calib)

    tools = {
        "torch-pruning": lambda m, r: tp_prune(m, r, example, CLASSIFIER[name], args.round_to),
        "slimkit": sk_prune,
    }
    rows: dict[str, dict] = {"dense": {"accuracy": dense_acc, "accuracy_seeds": [dense_acc]}}
    rows["dense"].update(measure(dense, example, tmp, f"{name}-dense"))
    ft = TrainConfig(epochs=args.ft_epochs, lr=args.ft_lr, max_batches=args.ft_batches)
    print(f"[{name}] target MACs <= {target:.0f}", flush=True)
    for tool, prune in tools.items():
        ratio, pruned = fit_ratio(dense, prune, example, target)
        print(f"[{name}] {tool}: ratio {ratio:.4f}, MACs {count_macs(pruned, example)}", flush=True)
        accs = []
        for seed in range(args.seeds):
            model = copy.deepcopy(pruned)
            cfg = TrainConfig.from_dict({**ft.to_dict(), "seed": seed})
            loss_fn = kd_loss(dense, args.kd_alpha, args.kd_temperature)
            train(model, data, cfg, loss_fn=loss_fn, description=f"{name} {tool} ft{seed}")
            accs.append(evaluate_accuracy(model, data.test))
            print(f"[{name}] {tool} seed {seed}: acc {accs[-1]:.4f}", flush=True)
        row = {"ratio": ratio, "accuracy": statistics.mean(accs), "accuracy_seeds": accs}
        row.update(measure(model, example, tmp, f"{name}-{tool}"))
        rows[tool] = row
        print(f"[{name}] {tool}: acc {row['accuracy']:.4f}, MACs {row['macs']}", flush=True)
    print(f"[{name}] timing dense and pruned ONNX files, interleaved", flush=True)
    time_interleaved(rows, example, args.runs, args.rounds)
    d = rows["dense"]
    for tool in tools:
        r = rows[tool]
        r["vs_dense"] = {
            "mac_reduction": d["macs"] / r["macs"],
            "param_reduction": d["params"] / r["params"],
            "speedup_b1": d["ort_ms_b1"] / r["ort_ms_b1"],
            "speedup_b64": d["ort_ms_b64"] / r["ort_ms_b64"],
            "accuracy_drop_pp": 100 * (d["accuracy"] - r["accuracy"]),
        }
    s = rows["slimkit"]["vs_dense"]
    rows["slimkit"]["targets_met"] = {
        "mac_reduction>=2": s["mac_reduction"] >= 2.0,
        "accuracy_drop<=0.5pp": s["accuracy_drop_pp"] <= 0.5,
        "speedup_b1>=1.6": s["speedup_b1"] >= 1.6,
    }
    return rows


def print_table(results: dict) -> None:
    head = (
        f"{'model':<12} {'tool':<14} {'acc %':>7} {'drop pp':>8} {'MACs':>10} {'params':>8} "
        f"{'ORT b1 ms':>10} {'ORT b64 ms':>11} {'MACx':>6} {'b1 x':>6} {'b64 x':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, rows in results.items():
        for tool, r in rows.items():
            v = r.get(
                "vs_dense",
                {"mac_reduction": 1, "speedup_b1": 1, "speedup_b64": 1, "accuracy_drop_pp": 0.0},
            )
            print(
                f"{name:<12} {tool:<14} {100 * r['accuracy']:7.2f} {v['accuracy_drop_pp']:8.2f} "
                f"{r['macs']:>10} {r['params']:>8} {r['ort_ms_b1']:10.3f} {r['ort_ms_b64']:11.3f} "
                f"{v['mac_reduction']:6.2f} {v['speedup_b1']:6.2f} {v['speedup_b64']:6.2f}"
            )
    print()
    for name, rows in results.items():
        a, b = rows["slimkit"], rows["torch-pruning"]
        met = a["targets_met"]
        print(
            f"{name}: slimkit vs torch-pruning at matched MAC target -> accuracy "
            f"{100 * (a['accuracy'] - b['accuracy']):+.2f} pp, ORT b1 latency ratio "
            f"{b['ort_ms_b1'] / a['ort_ms_b1']:.2f}x, b64 {b['ort_ms_b64'] / a['ort_ms_b64']:.2f}x; "
            + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items())
        )


def model_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """``args`` with the options left unset on the command line filled from the model's
    defaults (PER_MODEL_DEFAULTS); the settings are printed, so the output says what ran."""
    filled = copy.copy(args)
    for key, value in PER_MODEL_DEFAULTS[name].items():
        if getattr(filled, key) is None:
            setattr(filled, key, value)
    shown = ", ".join(f"{k} {getattr(filled, k)}" for k in PER_MODEL_DEFAULTS[name])
    print(f"[{name}] settings: {shown}")
    return filled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CLASSIFIER), choices=list(CLASSIFIER))
    ap.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "slimkit-bench"))
    ap.add_argument(
        "--ft-epochs", type=int, default=None, help="fine-tune epochs, both tools (per model)"
    )
    ap.add_argument(
        "--ft-batches", type=int, default=None, help="batches per fine-tune epoch (None: all)"
    )
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument(
        "--kd-alpha", type=float, default=0.0, help="KD weight from the dense model (both tools)"
    )
    ap.add_argument("--kd-temperature", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per tool")
    ap.add_argument(
        "--mac-target", type=float, default=None, help="required dense/pruned MACs (per model)"
    )
    ap.add_argument("--criterion", default="l1")
    ap.add_argument(
        "--scope",
        default="group",
        choices=["group", "filter"],
        help="slimkit l1/l2: score a channel by its whole dependency group or its filter only",
    )
    ap.add_argument("--global", dest="global_", action="store_true")
    ap.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="kept channels a multiple of this, for both tools (ORT kernels; per model)",
    )
    ap.add_argument(
        "--round-mode",
        default=None,
        choices=["up", "nearest"],
        help="slimkit: round kept channels up or to the nearest multiple of --round-to "
        "(Torch-Pruning uses its own rounding)",
    )
    ap.add_argument(
        "--min-channels",
        type=int,
        default=None,
        help="slimkit: every pruned group keeps at least this many channels (ORT runs 8-channel "
        "convs outside its blocked layout, so 16 can be faster than 8 at batch 1)",
    )
    ap.add_argument("--runs", type=int, default=None, help="timed ORT runs at batch 1 (per model)")
    ap.add_argument(
        "--rounds", type=int, default=10, help="timing rounds, each timing every row in turn"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument(
        "--out",
        default="pruning_structured",
        help="results file stem in benchmarks/results; models not run are kept from it",
    )
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (not a result)")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.ft_epochs, args.ft_batches, args.seeds, args.runs = 1, 1, 5, 1, 10
        args.rounds = 2
    torch.set_num_threads(args.threads)
    data = sk.load_dataset("mnist5k", batch_size=64)
    t0 = time.time()
    results, settings = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            filled = model_args(args, name)
            settings[name] = vars(filled)
            results[name] = run_model(name, data, filled, Path(tmp))
    print()
    print_table(results)
    elapsed = time.time() - t0
    print(f"\ntotal {elapsed:.0f}s")
    payload = {
        "benchmark": "pruning_structured",
        "dataset": "mnist5k",
        "settings_by_model": settings,
        "torch_pruning_version": __import__("torch_pruning").__version__,
        "elapsed_s": elapsed,
        "results": results,
    }
    if not args.quick:
        out = RESULTS.parent / f"{args.out}.json"
        if out.exists():  # keep the models this run did not touch (one process per model)
            old = json.loads(out.read_text())
            kept = {k: v for k, v in old.get("results", {}).items() if k not in results}
            payload["results"] = {**kept, **results}
            payload["settings_by_model"] = {
                **{k: old.get("settings", {}) for k in kept},
                **old.get("settings_by_model", {}),
                **settings,
            }
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out, json.dumps(payload, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
