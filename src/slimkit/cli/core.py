"""Foundation commands: train, eval, inspect, export, bench."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli.common import (
    console,
    load_data,
    load_model,
    load_model_for,
    print_table,
    refuse_overwrite,
)


def inspect_rows(model, example):
    from slimkit.metrics.flops import flops_by_module

    flops = flops_by_module(model, example)
    rows = []
    for name, m in model.named_modules():
        if list(m.children()) or name == "":
            continue
        params = sum(p.numel() for p in m.parameters(recurse=False))
        shape = (
            "x".join(map(str, m.weight.shape)) if getattr(m, "weight", None) is not None else "-"
        )
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        rows.append([name, type(m).__name__, shape, params, flops.get(name, 0), nbytes])
    return rows


def bench_rows(measurement):
    return [
        [r["runner"], r["batch"], r["threads"], r["median_ms"], r["p90_ms"]]
        for r in measurement.latency
    ]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        model: str = typer.Argument(..., help="zoo name, e.g. lenet5"),
        dataset: str = typer.Option("mnist5k", help="mnist5k | digits"),
        epochs: int = typer.Option(5),
        lr: float = typer.Option(1e-3),
        seed: int = typer.Option(0),
        out: Path = typer.Option(
            Path("model.safetensors"), help="where to write the trained model"
        ),
    ):
        """Train a zoo model and save it as safetensors + JSON manifest."""
        from slimkit import io as slim_io
        from slimkit.training import TrainConfig, evaluate_accuracy
        from slimkit.training import train as run_train

        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)  # options checked before any work
        refuse_overwrite({"the model": model}, {"--out": out}, model_file="--out")
        data = load_data(dataset)
        # --seed sets a zoo model's initial weights too (it used to reach only train()).
        m = load_model_for(model, dataset, seed=seed)
        from slimkit.preconditions import refuse_quantized

        refuse_quantized(  # a quantized file came back float, still marked quantized
            m,
            "slimkit train",
            "train the float model and quantize after (or quantize's "
            "finetune_centroids to fine-tune a k-means codebook)",
        )
        run_train(m, data, cfg)
        acc = evaluate_accuracy(m, data.test)
        n = slim_io.save(m, out)
        console.print(
            f"accuracy {acc:.4f} on {len(data.test.dataset)} test samples; wrote {out} ({n:,} bytes)"
        )

    @app.command("eval")
    def eval_(model: str, dataset: str = typer.Option("mnist5k")):
        """Accuracy of a model file (or an untrained zoo model) on a dataset's test split."""
        from slimkit.training import evaluate_accuracy

        data = load_data(dataset)
        m = load_model_for(model, dataset)
        console.print(f"accuracy {evaluate_accuracy(m, data.test):.4f}")

    @app.command()
    def inspect(model: str, image_size: int = typer.Option(28)):
        """Per-layer table: name, type, weight shape, params, FLOPs, bytes."""
        import torch

        m = load_model(model, image_size)
        arch = getattr(m, "slimkit_arch", {})
        size = arch.get("kwargs", {}).get("image_size", image_size)
        example = torch.zeros(1, 1, size, size)
        rows = inspect_rows(m, example)
        total = [
            "total",
            "",
            "",
            sum(r[3] for r in rows),
            sum(r[4] for r in rows),
            sum(r[5] for r in rows),
        ]
        print_table(
            f"{model}", ["name", "type", "shape", "params", "FLOPs", "bytes"], rows + [total]
        )

    @app.command()
    def export(
        model: str,
        out: Path = typer.Option(Path("model.onnx")),
        image_size: int = typer.Option(28),
        atol: float = typer.Option(1e-4),
    ):
        """Export to ONNX (opset 17, dynamic batch) with a parity check against PyTorch."""
        import torch

        from slimkit.export.onnx import to_onnx

        if out.suffix != ".onnx":
            from slimkit.errors import ConfigError

            raise ConfigError(f"--out must name an .onnx file, but got {str(out)!r}")
        refuse_overwrite({"the model": model}, {"--out": out})
        m = load_model(model, image_size)
        size = getattr(m, "slimkit_arch", {}).get("kwargs", {}).get("image_size", image_size)
        from slimkit.preconditions import int8_layers

        if int8_layers(m):  # was a plain fp32 graph (dynamic) or fp32 weights before Q/DQ (static)
            from slimkit.quantization import export_int8_onnx

            q = export_int8_onnx(m, out, torch.randn(1, 1, size, size))
            console.print(
                f"wrote {q.path} ({q.bytes:,} bytes): int8 ONNX, {q.int8_weights} int8 weight "
                f"tensors ({q.int8_weight_bytes:,} B), {q.float_weight_bytes:,} B float"
            )
            return
        res = to_onnx(m, out, torch.randn(1, 1, size, size), atol=atol)
        console.print(
            f"wrote {res.path} ({res.bytes:,} bytes), max |ORT - torch| = {res.max_abs_diff:.3g}"
        )

    @app.command()
    def bench(
        model: str,
        image_size: int = typer.Option(28),
        threads: int = typer.Option(2),
        runs: int = typer.Option(30),
    ):
        """Latency (median of N after warm-up) in PyTorch eager and ONNX Runtime, batch 1 and 64."""
        import torch

        from slimkit.metrics import evaluate

        m = load_model(model, image_size)
        from slimkit.preconditions import int8_layers

        if int8_layers(m):  # the fp32 export's latency was reported as this model's
            from slimkit.errors import ConfigError

            raise ConfigError(
                f"{model!r} holds an int8 model, and bench times a float export; time its int8 "
                f"ONNX instead: slimkit export {model} --out q.onnx, then run it in ONNX Runtime"
            )
        size = getattr(m, "slimkit_arch", {}).get("kwargs", {}).get("image_size", image_size)
        meas = evaluate(m, example_input=torch.randn(1, 1, size, size), threads=threads, runs=runs)
        print_table(
            f"{model} latency (ms)",
            ["runner", "batch", "threads", "median", "p90"],
            bench_rows(meas),
        )
        console.print(
            f"params {meas.params:,}  FLOPs {meas.flops:,}  safetensors {meas.bytes_safetensors:,} B  onnx {meas.bytes_onnx:,} B"
        )
