"""`slimkit prune` and `slimkit prune-scan`: unstructured/structured pruning from the shell.

``slimkit prune lenet5 --method gradual --set final_sparsity=0.9 --set finetune.epochs=1
--dataset mnist5k --out pruned.safetensors`` prunes, folds the masks into real zeros, writes the
model and prints a measured before/after table (params, nonzeros, bytes on disk dense and
sparse-encoded, FLOPs, ORT latency, accuracy).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer

from slimkit.cli.common import (
    console,
    load_data,
    load_model_for,
    print_table,
    refuse_overwrite,
)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=[x, y]"]`` -> ``{"a": 1, "b": {"c": ["x", "y"]}}`` (values via YAML safe_load)."""
    import yaml

    from slimkit.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, but got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}: {exc}") from None
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is already set to a value")
        node[leaf] = value
    return out


def make_config(method: str, options: dict[str, Any]):
    from slimkit.errors import ConfigError
    from slimkit.pruning.methods import METHODS

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {sorted(METHODS)}, but got {method!r}")
    return METHODS[method].from_dict(options)


def measure_row(label: str, model, data) -> list[Any]:
    """One measured row: writes the model (dense safetensors and sparse-encoded) and times ORT."""
    from slimkit import io as slim_io
    from slimkit.metrics import evaluate, file_bytes
    from slimkit.pruning.sparse_storage import save_sparse

    m = evaluate(model, data, batches=(1,), runners=("ort",), runs=20)
    with tempfile.TemporaryDirectory() as tmp:
        sparse = Path(tmp) / "sparse.safetensors"
        save_sparse(slim_io.state_tensors(model), sparse)
        sparse_bytes = file_bytes(sparse)
    return [
        label,
        m.params,
        m.nonzeros,
        m.bytes_safetensors,
        sparse_bytes,
        m.flops,
        m.latency_ms("ort", 1) or 0.0,
        m.accuracy or 0.0,
    ]


COLUMNS = [
    "name",
    "params",
    "nonzeros",
    "bytes",
    "sparse bytes",
    "FLOPs",
    "ORT ms (b=1)",
    "accuracy",
]


def register(app: typer.Typer) -> None:
    @app.command()
    def prune(
        model: str = typer.Argument(..., help="zoo name (e.g. lenet5) or a slimkit model file"),
        method: str = typer.Option("magnitude", help="magnitude | random | taylor | gradual | ..."),
        set_: list[str] = typer.Option(
            [], "--set", help="config option key=value (repeatable; a.b=v nests)"
        ),
        dataset: str = typer.Option("mnist5k", help="mnist5k | digits"),
        out: Path = typer.Option(
            Path("pruned.safetensors"), help="where to write the pruned model"
        ),
        sparse_out: Path | None = typer.Option(None, help="also write sparse-encoded weights here"),
    ):
        """Prune a model, fold masks into real zeros, save it, print a measured before/after table."""
        import copy

        from slimkit import io as slim_io
        from slimkit.pruning import finalize_, prune_
        from slimkit.pruning.sparse_storage import save_sparse

        cfg = make_config(method, parse_sets(set_))
        refuse_overwrite(
            {"the model": model}, {"--out": out, "--sparse-out": sparse_out}, model_file="--out"
        )
        data = load_data(dataset)
        net = load_model_for(model, dataset)
        original = copy.deepcopy(net)
        prune_(net, cfg, data=data)  # first: a bad target is refused before the measuring
        finalize_(net)
        before = measure_row("before", original, data)
        n = slim_io.save(net, out)
        after = measure_row("after", net, data)
        print_table(f"prune {model} ({type(cfg).__name__})", COLUMNS, [before, after])
        ratio = before[2] / max(1, after[2])
        console.print(
            f"nonzeros {ratio:.2f}x fewer; sparse-encoded bytes {before[4] / max(1, after[4]):.2f}x smaller"
        )
        console.print(f"wrote {out} ({n:,} bytes)")
        if sparse_out is not None:
            console.print(
                f"wrote {sparse_out} ({save_sparse(slim_io.state_tensors(net), sparse_out):,} bytes)"
            )

    @app.command("prune-scan")
    def prune_scan(
        model: str = typer.Argument(..., help="zoo name or slimkit model file (trained)"),
        dataset: str = typer.Option("mnist5k"),
        sparsities: str = typer.Option("0.5,0.7,0.9,0.95,0.98", help="comma-separated"),
        plot: Path = typer.Option(Path("sensitivity.png"), help="PNG of accuracy vs sparsity"),
        max_batches: int | None = typer.Option(None, help="evaluate on this many test batches"),
    ):
        """Per-layer sensitivity: accuracy with each layer pruned alone at each sparsity."""
        from slimkit.errors import ConfigError
        from slimkit.pruning import sensitivity_scan
        from slimkit.pruning.sensitivity import check_plot_path

        try:
            levels = [float(s) for s in sparsities.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--sparsities must be comma-separated numbers, but got {sparsities!r}"
            ) from None
        # The scan takes minutes; a --plot it could not write was refused only after it.
        refuse_overwrite({"the model": model}, {"--plot": plot})
        check_plot_path(plot, "--plot")
        data = load_data(dataset)
        net = load_model_for(model, dataset)
        table = sensitivity_scan(net, data, levels, max_batches=max_batches, plot=plot)
        rows = [[name, *accs] for name, accs in table.accuracy.items()]
        print_table(
            f"sensitivity (dense accuracy {table.baseline:.4f})", ["layer", *map(str, levels)], rows
        )
        console.print(f"wrote {plot}")
