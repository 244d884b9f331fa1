"""Edge/server split: cut a model into a head (runs on the device) and a tail (runs on a server).

The model is traced with ``torch.fx``. A *valid cut* is a position in the graph after which
exactly one tensor is live (every later node reads only that tensor and constants), so a cut
never falls inside a residual block. For each cut we measure at batch 1:

- the activation bytes that cross the network (float32, the tensor shape after the cut);
- the ONNX Runtime latency of the head and of the tail, each exported on its own;

and score ``edge_ms + transfer_ms + server_ms`` where ``edge_ms = head_ms * edge_slowdown``,
``server_ms = tail_ms / server_speedup`` and
``transfer_ms = rtt_ms + bytes * 8 / (bandwidth_mbps * 1e6) * 1000`` (Kang et al., Neurosurgeon,
ASPLOS 2017). The chosen cut is exported as ``head.onnx`` + ``tail.onnx`` + ``split.json`` after
checking that running tail(head(x)) in ONNX Runtime matches the whole PyTorch model.

    plan = plan_split(model, x, SplitConfig(bandwidth_mbps=10))
    result = export_split(model, x, "out/", SplitConfig(at=plan.best.name))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from slimkit import atomic
from slimkit.config import SlimConfig, check_int, check_range
from slimkit.errors import ConfigError, ParityError

SPLIT_FORMAT = "slimkit-split"


@dataclasses.dataclass(frozen=True)
class SplitConfig(SlimConfig):
    """Network and device assumptions of the split objective, and an optional forced cut."""

    bandwidth_mbps: float = 10.0
    rtt_ms: float = 0.0  # fixed network round-trip added to every transfer
    edge_slowdown: float = 1.0  # the edge device is this many times slower than this machine
    server_speedup: float = 1.0  # the server is this many times faster than this machine
    at: str | None = None  # cut after this layer (a name from cut_points); None: best score
    threads: int = 1  # ORT intra-op threads for the latency measurement
    runs: int = 20  # timed runs per measurement (median)
    atol: float = 1e-4  # allowed max |tail(head(x)) - model(x)|

    def validate(self) -> None:
        check_range("bandwidth_mbps", self.bandwidth_mbps, 0.0, 1e6, low_open=True)
        check_range("rtt_ms", self.rtt_ms, 0.0, 1e6)
        check_range("edge_slowdown", self.edge_slowdown, 0.0, 1e4, low_open=True)
        check_range("server_speedup", self.server_speedup, 0.0, 1e4, low_open=True)
        check_int("threads", self.threads, 1, 256)
        check_int("runs", self.runs, 1, 100_000)
        check_range("atol", self.atol, 0.0, 1.0)
        if self.at is not None and (not isinstance(self.at, str) or not self.at):
            raise ConfigError(f"at must be a layer name from the cut table, but got {self.at!r}")


@dataclasses.dataclass(frozen=True)
class CutPoint:
    name: str  # layer name (call_module target) or fx node name
    index: int  # position of the node in the traced graph
    shape: tuple[int, ...]  # activation shape at batch 1
    bytes: int  # float32 bytes crossing the network at batch 1


@dataclasses.dataclass
class CutScore:
    cut: CutPoint
    head_ms: float
    tail_ms: float
    edge_ms: float
    transfer_ms: float
    server_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cut"]["shape"] = list(self.cut.shape)
        return d


@dataclasses.dataclass
class SplitPlan:
    scores: list[CutScore]
    best: CutScore
    whole_ms: float  # the whole model in ORT on this machine
    input_bytes: int
    output_bytes: int
    config: SplitConfig

    def reference_ms(self) -> dict[str, float]:
        """The two trivial splits: everything on the server, everything on the edge."""
        c = self.config
        return {
            "all_server": transfer_ms(self.input_bytes, c) + self.whole_ms / c.server_speedup,
            "all_edge": self.whole_ms * c.edge_slowdown + transfer_ms(self.output_bytes, c),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "best": self.best.cut.name,
            "whole_ms": self.whole_ms,
            "reference_ms": self.reference_ms(),
            "candidates": [s.to_dict() for s in self.scores],
        }


def transfer_ms(nbytes: int, cfg: SplitConfig) -> float:
    return cfg.rtt_ms + nbytes * 8 / (cfg.bandwidth_mbps * 1e6) * 1000.0


def trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx symbolic trace; an untraceable model is a ConfigError naming the reason."""
    try:
        return fx.symbolic_trace(model.eval())
    except Exception as exc:  # fx raises TraceError / TypeError on data-dependent control flow
        raise ConfigError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); only traceable models can be split"
        ) from None


def _cut_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]


@torch.no_grad()
def cut_points(model: nn.Module, example: torch.Tensor) -> list[CutPoint]:
    """Every valid cut with its activation shape and bytes at batch 1, in graph order."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = trace(model)
    ShapeProp(gm).propagate(example[:1])
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    compute = _compute_nodes(gm)
    cuts: list[CutPoint] = []
    for node in compute[:-1]:  # a cut after the last node would leave the tail empty
        i = pos[node]
        live = {
            n for n in nodes[: i + 1] if n.op != "get_attr" and any(pos[u] > i for u in n.users)
        }
        meta = node.meta.get("tensor_meta")
        if live != {node} or meta is None or not hasattr(meta, "shape"):
            continue
        shape = tuple(int(s) for s in meta.shape)
        nbytes = int(np.prod(shape)) * torch.empty((), dtype=meta.dtype).element_size()
        cuts.append(CutPoint(_cut_name(node), i, shape, nbytes))
    return cuts


def find_cut(model: nn.Module, example: torch.Tensor, at: str) -> CutPoint:
    """The valid cut named ``at``; anything else is an error listing the valid names."""
    cuts = cut_points(model, example)
    for c in cuts:
        if c.name == at:
            return c
    gm = trace(model)
    node = next((n for n in _compute_nodes(gm) if _cut_name(n) == at), None)
    if node is None:
        why = "no layer or graph node has that name"
    elif any(u.op == "output" for u in node.users):
        why = "it is the model's last layer, so the server part would be empty"
    else:
        why = "it is inside a residual block or a branch (more than one tensor is live there)"
    raise ConfigError(
        f"{at!r} is not a valid split point: {why}. Valid cut points are: {[c.name for c in cuts]}"
    )


def split_model(
    model: nn.Module, example: torch.Tensor, at: str
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Head (input -> activation after ``at``) and tail (that activation -> output)."""
    cut = find_cut(model, example, at)
    gm = trace(model)
    nodes = list(gm.graph.nodes)
    cut_node = nodes[cut.index]

    head_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[: cut.index + 1]:
        env[n] = head_graph.node_copy(n, lambda a: env[a])
    head_graph.output(env[cut_node])

    tail_graph = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {cut_node: tail_graph.placeholder("x")}
    for n in nodes:  # constants may be read on both sides of the cut
        if n.op == "get_attr":
            tenv[n] = tail_graph.node_copy(n, lambda a: tenv[a])
    for n in nodes[cut.index + 1 :]:
        if n.op != "get_attr":
            tenv[n] = tail_graph.node_copy(n, lambda a: tenv[a])
    parts = []
    for graph, name in ((head_graph, "Head"), (tail_graph, "Tail")):
        part = fx.GraphModule(gm, graph, name)
        part.graph.eliminate_dead_code()  # unused constants
        part.recompile()
        parts.append(part.eval())
    return parts[0], parts[1]


def _ort_ms(onnx_bytes: bytes, x: torch.Tensor, cfg: SplitConfig) -> float:
    from slimkit.metrics.latency import ort_latency

    return ort_latency(onnx_bytes, x, 1, threads=cfg.threads, runs=cfg.runs).median_ms  # type: ignore[arg-type]


@torch.no_grad()
def score_cut(model: nn.Module, example: torch.Tensor, cut: CutPoint, cfg: SplitConfig) -> CutScore:
    """Measure one cut: ORT latency of head and tail at batch 1, and the objective."""
    from slimkit.export.onnx import export_bytes

    head, tail = split_model(model, example, cut.name)
    x = example[:1]
    mid = head(x)
    head_ms = _ort_ms(export_bytes(head, x), x, cfg)
    tail_ms = _ort_ms(export_bytes(tail, mid), mid, cfg)
    edge, server = head_ms * cfg.edge_slowdown, tail_ms / cfg.server_speedup
    xfer = transfer_ms(cut.bytes, cfg)
    return CutScore(cut, head_ms, tail_ms, edge, xfer, server, edge + xfer + server)


@torch.no_grad()
def plan_split(
    model: nn.Module, example: torch.Tensor, cfg: SplitConfig | None = None
) -> SplitPlan:
    """Score every valid cut (or only ``cfg.at``) and pick the lowest total latency."""
    from slimkit.export.onnx import export_bytes

    cfg = cfg or SplitConfig()
    model = model.eval()
    cuts = [find_cut(model, example, cfg.at)] if cfg.at else cut_points(model, example)
    if not cuts:
        raise ConfigError(f"{type(model).__name__} has no valid cut point (one live tensor)")
    scores = [score_cut(model, example, c, cfg) for c in cuts]
    best = min(scores, key=lambda s: s.total_ms)
    x = example[:1]
    whole_ms = _ort_ms(export_bytes(model, x), x, cfg)
    out = model(x)
    return SplitPlan(
        scores, best, whole_ms, x.numel() * x.element_size(), out.numel() * out.element_size(), cfg
    )


@dataclasses.dataclass
class SplitResult:
    head_path: str
    tail_path: str
    manifest_path: str
    plan: SplitPlan
    max_abs_diff: float  # |tail(head(x)) - model(x)| in ONNX Runtime, on the example batch


@torch.no_grad()
def composition_diff(
    model: nn.Module, head_onnx: bytes | str, tail_onnx: bytes | str, x: torch.Tensor
) -> float:
    """Max |ORT tail(ORT head(x)) - model(x)|."""
    from slimkit.export.ort import make_session

    h, t = make_session(head_onnx, threads=1), make_session(tail_onnx, threads=1)
    mid = h.run(None, {h.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    got = t.run(None, {t.get_inputs()[0].name: mid})[0]
    return float(np.abs(model.eval()(x).numpy() - got).max())


@torch.no_grad()
def export_split(
    model: nn.Module, example: torch.Tensor, out_dir: str | Path, cfg: SplitConfig | None = None
) -> SplitResult:
    """Plan the split, write ``head.onnx``, ``tail.onnx`` and ``split.json`` into ``out_dir``.

    All three files are checked before any is written (an earlier split there stays whole
    when a check fails), and the output folder before the cuts are timed."""
    from slimkit.export.onnx import checked_export_bytes

    cfg = cfg or SplitConfig()
    out_dir = Path(out_dir)
    for name in ("head.onnx", "tail.onnx", "split.json"):
        atomic.check_writable(out_dir / name)  # a file in the way: before minutes of timing
    plan = plan_split(model, example, cfg)
    head, tail = split_model(model, example, plan.best.cut.name)
    head_onnx, _ = checked_export_bytes(head, example, atol=cfg.atol)
    tail_onnx, _ = checked_export_bytes(tail, head(example), atol=cfg.atol)
    diff = composition_diff(model, head_onnx, tail_onnx, example)
    if not diff <= cfg.atol:
        raise ParityError(
            f"tail(head(x)) differs from the whole model by {diff:.3g} > atol {cfg.atol:g}"
        )
    out = atomic.output_dir(out_dir)
    head_path, tail_path = out / "head.onnx", out / "tail.onnx"
    # The manifest goes first and comes back last: a write cut short never pairs the new
    # graphs with an earlier split's manifest (a different cut).
    (out / "split.json").unlink(missing_ok=True)
    atomic.write_bytes(head_path, head_onnx)
    atomic.write_bytes(tail_path, tail_onnx)
    manifest = {
        "format": SPLIT_FORMAT,
        "head": head_path.name,
        "tail": tail_path.name,
        "cut": plan.best.to_dict(),
        "composition_max_abs_diff": diff,
        **plan.to_dict(),
    }
    atomic.write_json(out / "split.json", manifest)
    return SplitResult(str(head_path), str(tail_path), str(out / "split.json"), plan, diff)
