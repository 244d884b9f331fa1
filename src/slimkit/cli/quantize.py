"""`slimkit quantize`: quantize a model file or zoo model with any method in ``METHODS``.

    slimkit quantize lenet5 --method kmeans --set bits=4 --out q.safetensors
    slimkit quantize model.safetensors --method mixed --set budget_bits_per_weight=3 --data digits

``--set key=value`` values are parsed as YAML scalars/lists (``bits=4``, ``symmetric=false``,
``targets=[fc1, "re:conv.*"]``). Prints the weight SQNR of every quantized layer and a size
table: float32 weight bytes, bytes of the really packed codes, and the bytes of the file written.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from slimkit.cli.common import (
    console,
    load_data,
    load_model,
    load_model_for,
    print_table,
    refuse_overwrite,
)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["bits=4", "targets=[fc1]"]`` -> ``{"bits": 4, "targets": ["fc1"]}`` (YAML safe_load)."""
    import yaml

    from slimkit.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value (e.g. --set bits=4), but got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
    return out


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        model: str = typer.Argument(..., help="zoo name (lenet5) or a slimkit model file"),
        method: str = typer.Option(..., "--method", help="quantization method, e.g. kmeans"),
        set_: list[str] = typer.Option([], "--set", help="method option key=value (repeatable)"),
        out: Path = typer.Option(Path("quantized.safetensors"), help="model file to write"),
        data: str | None = typer.Option(
            None, help="dataset for calibration / sensitivity / fine-tuning (digits | mnist5k)"
        ),
        finetune_epochs: int = typer.Option(
            0, help="k-means only: epochs of centroid fine-tuning on --data"
        ),
    ):
        """Quantize a model's weights; print per-layer SQNR and the size table."""
        import copy

        from slimkit import io as slim_io
        from slimkit.errors import ConfigError
        from slimkit.quantization import QUANTIZERS, quantize_
        from slimkit.quantization.common import layer_reports
        from slimkit.quantization.methods import method_config
        from slimkit.training import TrainConfig, evaluate_accuracy

        config = method_config(method, parse_sets(set_))
        refuse_overwrite({"the model": model}, {"--out": out}, model_file="--out")
        bundle = load_data(data) if data else None
        m = load_model_for(model, data, data_flag="--data") if data else load_model(model, 28)
        original = copy.deepcopy(m).eval()
        kwargs: dict[str, Any] = {}
        if bundle is not None and _accepts(QUANTIZERS.lookup(config), "data"):
            kwargs["data"] = bundle
        m = quantize_(m, config, **kwargs)
        if finetune_epochs:
            from slimkit.quantization.kmeans import finetune_centroids

            if bundle is None:
                raise ConfigError("--finetune-epochs needs --data to train the centroids on")
            finetune_centroids(m, bundle, TrainConfig(epochs=finetune_epochs, lr=1e-4))
        rows = layer_reports(original, m)
        print_table(
            "quantized layers (weight SQNR, packed bytes measured by packing the codes)",
            ["layer", "scheme", "bits", "weights", "SQNR dB", "float32 B", "packed B"],
            [
                [
                    r.layer,
                    r.scheme,
                    r.bits,
                    r.numel,
                    r.weight_sqnr_db,
                    r.float_bytes,
                    r.packed_bytes,
                ]
                for r in rows
            ],
        )
        n_written = slim_io.save(m, out)
        f32 = sum(r.float_bytes for r in rows)
        packed = sum(r.packed_bytes for r in rows)
        size_rows: list[list[object]] = [
            ["quantized weights as float32", f32],
            ["quantized weights packed (codes + params)", packed],
            [f"file written: {out}", n_written],
        ]
        print_table("size", ["name", "bytes"], size_rows)
        if f32:
            console.print(f"packed weights are {f32 / max(1, packed):.2f}x smaller than float32")
        if bundle is not None:
            acc0 = evaluate_accuracy(original, bundle.test)
            acc1 = evaluate_accuracy(m, bundle.test)
            console.print(f"test accuracy {acc0:.4f} -> {acc1:.4f}")
