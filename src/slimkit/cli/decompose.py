"""`slimkit decompose` and `slimkit split`: thin commands over slimkit.decomposition.

slimkit decompose lenet5 --method svd --set ratio=0.5 --out lenet5_svd.safetensors
slimkit split resnet --bandwidth-mbps 10 --out split_dir/
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import typer

from slimkit.cli.common import (
    console,
    image_size_of,
    load_data,
    load_model,
    load_model_for,
    print_table,
    refuse_overwrite,
)


def parse_sets(items: list[str]) -> dict[str, object]:
    """``["ratio=0.5", "targets=[fc1]"]`` -> ``{"ratio": 0.5, "targets": ["fc1"]}`` (YAML values)."""
    import yaml

    from slimkit.errors import ConfigError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, but got {item!r}; e.g. --set ratio=0.5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {value!r} is not a valid YAML value") from None
    return out


def _example(model, dataset: str):
    import torch

    kwargs = getattr(model, "slimkit_arch", {}).get("kwargs", {})
    size = kwargs.get("image_size", image_size_of(dataset))
    return torch.randn(
        2, kwargs.get("in_channels", 1), size, size, generator=torch.Generator().manual_seed(0)
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def decompose(
        model: str = typer.Argument(..., help="zoo name (e.g. lenet5) or a .safetensors file"),
        method: str = typer.Option("svd", help="svd | tucker | cp | depthwise (see METHODS)"),
        set_: list[str] = typer.Option([], "--set", help="config option KEY=VALUE, repeatable"),
        dataset: str = typer.Option("mnist5k", help="data for fitting, recovery and accuracy"),
        use_data: bool = typer.Option(
            False, "--data/--no-data", help="load the dataset (depthwise fit, recovery, accuracy)"
        ),
        out: Path | None = typer.Option(None, help="write the decomposed model here"),
        runs: int = typer.Option(30, help="timed ORT runs per latency measurement"),
    ):
        """Decompose a model and print params/FLOPs/bytes/ORT latency before and after."""
        from slimkit import io as slim_io
        from slimkit.decomposition import decompose_, decomposition_plan, make_config
        from slimkit.decomposition.report import before_after
        from slimkit.errors import ConfigError

        cfg = make_config(method, parse_sets(set_))
        if runs < 1:  # was refused only after the decomposition, by the latency timer
            raise ConfigError(f"--runs must be at least 1 (timed ORT runs), but got {runs}")
        refuse_overwrite({"the model": model}, {"--out": out}, model_file="--out")
        data = load_data(dataset) if use_data else None
        m = (
            load_model_for(model, dataset)
            if use_data
            else load_model(model, image_size_of(dataset))
        )
        original = copy.deepcopy(m).eval()
        decompose_(m, cfg, data=data)
        m.eval()
        example = data.example_input(1) if data is not None else _example(m, dataset)[:1]
        plan = decomposition_plan(m)
        print_table(
            f"{method} per layer",
            ["layer", "rank", "params before", "params after", "applied", "rel. error", "note"],
            [
                [
                    k,
                    str(v["rank"]),
                    v["params_before"],
                    v["params_after"],
                    str(v["applied"]),
                    v["rel_error"] if v["rel_error"] is not None else "-",
                    v.get("reason") or "",
                ]
                for k, v in plan.items()
            ],
        )
        skipped = [v for v in plan.values() if not v["applied"]]
        ranked = any("would hold" in (v.get("reason") or "") for v in skipped)
        ranked = ranked and "ratio" in {f.name for f in dataclasses.fields(cfg)}
        if plan and len(skipped) == len(plan):  # was exit 0, an unchanged copy written
            raise ConfigError(
                f"{method} decomposed no layer ({skipped[0]['layer']}: {skipped[0]['reason']}); "
                "nothing would get smaller at these settings"
                + (": choose a smaller rank, e.g. --set ratio=0.5" if ranked else "")
            )
        report = before_after(original, m, example, data, runs=runs)
        print_table(
            f"{model} before / after {method}",
            ["metric", "before", "after", "ratio"],
            report.rows(),
        )
        if out is not None:
            n = slim_io.save(m, out, meta={"decomposition": cfg.to_dict(), "method": method})
            console.print(f"wrote {out} ({n:,} bytes)")

    @app.command()
    def split(
        model: str = typer.Argument(..., help="zoo name (e.g. resnet) or a .safetensors file"),
        bandwidth_mbps: float = typer.Option(10.0, help="network bandwidth edge -> server"),
        rtt_ms: float = typer.Option(0.0, help="fixed network round trip per request"),
        edge_slowdown: float = typer.Option(
            1.0, help="edge device is this many times slower than here"
        ),
        server_speedup: float = typer.Option(
            1.0, help="server is this many times faster than here"
        ),
        at: str | None = typer.Option(None, help="force the cut after this layer"),
        dataset: str = typer.Option("mnist5k", help="sets the input size (28x28; digits: 8x8)"),
        runs: int = typer.Option(20, help="timed ORT runs per measurement"),
        out: Path = typer.Option(Path("split"), help="folder for head.onnx, tail.onnx, split.json"),
    ):
        """Split a model into edge head + server tail at the cut with the lowest total latency."""
        from slimkit.decomposition.split import SplitConfig, export_split

        m = load_model(model, image_size_of(dataset)).eval()
        cfg = SplitConfig(
            bandwidth_mbps=bandwidth_mbps,
            rtt_ms=rtt_ms,
            edge_slowdown=edge_slowdown,
            server_speedup=server_speedup,
            at=at,
            runs=runs,
        )
        result = export_split(m, _example(m, dataset), out, cfg)
        plan = result.plan
        rows = [
            [
                ("* " if s is plan.best else "") + s.cut.name,
                "x".join(map(str, s.cut.shape)),
                s.cut.bytes,
                s.edge_ms,
                s.transfer_ms,
                s.server_ms,
                s.total_ms,
            ]
            for s in plan.scores
        ]
        print_table(
            f"{model}: cut points at {bandwidth_mbps} Mbit/s (ms, batch 1)",
            ["layer", "activation", "bytes", "edge", "transfer", "server", "total"],
            rows,
        )
        ref = plan.reference_ms()
        console.print(
            f"best cut: {plan.best.cut.name} ({plan.best.total_ms:.3f} ms); for reference, all on "
            f"server {ref['all_server']:.3f} ms, all on edge {ref['all_edge']:.3f} ms"
        )
        console.print(
            f"wrote {result.head_path}, {result.tail_path}, {result.manifest_path}; "
            f"|tail(head(x)) - model(x)| = {result.max_abs_diff:.2g}"
        )
