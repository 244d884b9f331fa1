"""Structural compression of a BERT-family sentence encoder, recovered by distillation.

- Layer dropping: keep the encoder layers listed in ``keep_layers`` (others removed).
- Attention-head pruning: per layer, the heads whose removal costs least (measured: embedding
  cosine loss on real sentences with that head's context zeroed) are cut out of Q/K/V (output
  rows) and the attention output projection (input columns). HF's ``prune_heads`` no longer
  exists in transformers 5, and BERT's attention infers the head count from the tensor shape
  (``view(..., -1, head_size)``), so slicing the Linears is all it takes.
- FFN neuron pruning: per layer, neurons are cut out of ``intermediate.dense`` (output rows)
  and ``output.dense`` (input columns). Default ``ffn_criterion="obs"``: removed one at a time
  by the Optimal Brain Surgeon error with an exact least-squares update of the kept columns
  and bias (``obs_prune_ffn_``); ``"variance"``: ranked by activation std times the neuron's
  output-column norm, then one least-squares refit. The FFN is about 2/3 of a layer's matmul
  FLOPs at short sequence lengths, so this buys speed with less damage than dropping layers.
- Distillation from the fp32 model on sentences: loss = embedding loss (1 - cosine to the
  teacher's embedding) + ``pair_weight`` * in-batch similarity-matrix MSE + ``hidden_weight`` *
  masked MSE between each student layer's output and the teacher layer it stands for.
  Training text = the given sentences plus random word spans and sentence pairs built from
  them, mixed with ``unlabelled_text`` (``slimkit.data.unlabelled_text``: 2,000 shipped
  in-domain sentences) so a few hundred sentences are not memorised. ``val_fraction`` of the
  sentences and ``val_unlabelled`` lines of the unlabelled text are held back before the scans
  (so the refit never fits them); the student is scored on them at step 0 and every
  ``eval_every`` steps, and the best weights are kept (light pruning can leave little to
  recover, and then training drifts: measured on MiniLM at ffn_fraction 0.3, held-out Spearman
  fell from 0.9743 after pruning to 0.9644 after 600 steps).
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.config import SlimConfig, check_int, check_range
from slimkit.errors import ConfigError
from slimkit.registry import Registry
from slimkit.transformers.embed import check_sentence_encoder

REGISTRY = Registry("transformer structural")
FFN_CRITERIA = ("obs", "variance")


@dataclasses.dataclass(frozen=True)
class DistillConfig(SlimConfig):
    steps: int = 300
    batch_size: int = 32
    # Measured on MiniLM (held-out Spearman, fp32), dropout off, 300 steps: at ffn_fraction 0.6,
    # 0.9394 at 3e-4 and 0.9362 at 1e-4; at 0.3, 0.9799 at 1e-4, while at 3e-4 every score in
    # 200 steps stayed below the undistilled student's (so step 0 was kept). With dropout, 200
    # steps at 0.6: 0.9238 at 5e-5, 0.9277 at 3e-4, 0.9116 at 1e-3.
    lr: float = 1e-4
    hidden_weight: float = 1.0
    embedding_weight: float = 1.0
    # MSE between the student's and the teacher's in-batch cosine-similarity matrices: the
    # quantity a Spearman correlation of pairwise similarities ranks.
    pair_weight: float = 1.0
    augment: bool = True
    # Share of each batch drawn from the unlabelled text passed to ``distill_`` (when given);
    # the rest comes from the (augmented) task sentences.
    unlabelled_share: float = 0.5
    # Share of the task sentences held back (never trained on) to score the student every
    # ``eval_every`` steps and at step 0 by the Spearman correlation of its pairwise similarities
    # with the teacher's; the best-scoring weights are kept, so distillation never leaves the
    # student worse than pruning did. Measured on MiniLM at ffn_fraction 0.3, without it: held-out
    # Spearman 0.9743 after pruning, 0.9644 after 600 steps. 0 = keep the last step (unless
    # ``distill_`` is handed its validation sentences).
    val_fraction: float = 0.2
    # Lines of the unlabelled text also held back for that score (at most half of them; only
    # when ``val_fraction`` > 0). Measured on MiniLM at ffn_fraction 0.2: 35 task sentences alone
    # (0.2 of 177; 595 pairs), which the FFN refit had also fitted, kept step 0 (held-out
    # Spearman after int8 0.9815) where training on without any check reached 0.9836; with 256
    # lines more, all held back from the refit, step 600 was kept: 0.9834.
    val_unlabelled: int = 256
    eval_every: int = 50
    # Stop after this many scores in a row without a new best (0 = run all ``steps``), but not
    # before half the steps: the first, larger steps can dip below step 0's score before the
    # student improves. Measured on MiniLM at ffn_fraction 0.3 with 1200 steps: the scores at
    # steps 50-200 all stayed below step 0's, a stop at 200 kept the undistilled student
    # (held-out Spearman 0.9743); run on, it kept step 1100 (0.9815).
    patience: int = 4
    # The student's dropout layers stay off by default: the teacher is deterministic and the
    # student starts close to it, so dropout only adds noise to the target. Measured on MiniLM,
    # held-out Spearman after 300 steps at lr 1e-4: 0.9799 without vs never above the undistilled
    # 0.9743 with (ffn_fraction 0.3); 0.9362 without vs 0.9334 after 600 steps with (0.6).
    dropout: bool = False
    seed: int = 0

    def validate(self) -> None:
        check_int("distill.steps", self.steps, 0, 1_000_000)
        check_range("distill.val_fraction", self.val_fraction, 0.0, 0.9)
        check_int("distill.val_unlabelled", self.val_unlabelled, 0, 1_000_000)
        check_int("distill.eval_every", self.eval_every, 1, 1_000_000)
        check_int("distill.patience", self.patience, 0, 1_000_000)
        check_int("distill.batch_size", self.batch_size, 1, 4096)
        check_range("distill.lr", self.lr, 0.0, 1.0, low_open=True)
        check_range("distill.hidden_weight", self.hidden_weight, 0.0, 1e6)
        check_range("distill.embedding_weight", self.embedding_weight, 0.0, 1e6)
        check_range("distill.pair_weight", self.pair_weight, 0.0, 1e6)
        check_range("distill.unlabelled_share", self.unlabelled_share, 0.0, 1.0)
        check_int("distill.seed", self.seed, 0, 2**63 - 1)


@dataclasses.dataclass(frozen=True)
class EncoderStructural(SlimConfig):
    """Keep ``keep_layers`` (empty = all), prune ``head_fraction`` of heads and ``ffn_fraction``
    of FFN neurons per layer (kept neuron counts rounded up to ``ffn_multiple``), distill."""

    keep_layers: tuple[int, ...] = ()
    head_fraction: float = 0.0
    ffn_fraction: float = 0.0
    ffn_multiple: int = 32  # GEMM-friendly widths
    # Least-squares refit of each pruned FFN output projection on the scan sentences' tokens.
    ffn_refit: bool = True
    # Which neurons go (with ffn_refit): "obs" removes them one at a time by the Optimal Brain
    # Surgeon error with exact least-squares compensation of the kept ones (as ZipLM); "variance"
    # ranks by activation std * output-column norm, then refits once. Measured on MiniLM,
    # held-out Spearman before distillation: 0.934 vs 0.921 at ffn_fraction 0.5, 0.882 vs 0.863
    # at 0.67.
    ffn_criterion: str = "obs"
    distill: DistillConfig = DistillConfig()
    scan_sentences: int = 256
    # Extra unlabelled text for the scans, the refit and distillation, by source name in
    # slimkit.data.unlabelled_text ("distill_en"); "" = only the task sentences.
    unlabelled_text: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.distill, dict):
            object.__setattr__(self, "distill", DistillConfig.from_dict(self.distill))
        super().__post_init__()

    def validate(self) -> None:
        if not isinstance(self.distill, DistillConfig):
            raise ConfigError(
                f"distill must be a DistillConfig or a mapping such as {{'steps': 300}}, "
                f"but got {self.distill!r}"
            )
        check_range("head_fraction", self.head_fraction, 0.0, 1.0, high_open=True)
        check_range("ffn_fraction", self.ffn_fraction, 0.0, 1.0, high_open=True)
        check_int("ffn_multiple", self.ffn_multiple, 1, 4096)
        if self.ffn_criterion not in FFN_CRITERIA:
            raise ConfigError(
                f"ffn_criterion must be one of {list(FFN_CRITERIA)}, but got {self.ffn_criterion!r}"
            )
        if not isinstance(self.keep_layers, (tuple, list)):
            raise ConfigError(
                f"keep_layers must be a list of layer indices such as (0, 2, 4), but got "
                f"{self.keep_layers!r}"
            )
        if len(set(self.keep_layers)) != len(self.keep_layers) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.keep_layers
        ):
            raise ConfigError(
                f"keep_layers must be distinct layer indices >= 0, but got {list(self.keep_layers)}"
            )
        check_int("scan_sentences", self.scan_sentences, 2, 100_000)
        from slimkit.data.unlabelled_text import SOURCES

        if self.unlabelled_text not in ("", *SOURCES):
            raise ConfigError(
                f"unlabelled_text must be '' or one of {list(SOURCES)}, "
                f"but got {self.unlabelled_text!r}"
            )


@dataclasses.dataclass(frozen=True)
class StructuralResult:
    kept_layers: list[int]
    heads_kept: dict[str, list[int]]  # "encoder.layer.{i}" (student index) -> kept head ids
    ffn_kept: dict[str, int]  # "encoder.layer.{i}" (student index) -> FFN neurons kept
    head_scores: dict[str, list[float]]
    params_before: int
    params_after: int
    distill_loss_first: float
    distill_loss_last: float
    # step whose weights were kept (-1: no validation, the last step) and the validation
    # Spearman measured at each scored step
    distill_best_step: int = -1
    distill_val_spearman: dict[int, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- layer dropping ---------------------------------------------------------------------------


def check_keep_layers(keep: Sequence[int], n: int) -> list[int]:
    """``keep`` must be a non-empty subset of the model's ``n`` encoder layers 0..n-1; returns
    it as Python ints."""
    return _check_indices("keep_layers", keep, n, "encoder layers")


def check_prunes_something(cfg: EncoderStructural, n_layers: int | None) -> None:
    """Refuse a config that keeps every layer, head and FFN neuron: distilling an unchanged
    copy takes minutes and returns the model it started from. ``n_layers`` None (model not
    loaded yet): only an empty ``keep_layers`` counts as keeping them all."""
    every = list(range(n_layers)) if n_layers is not None else None
    keeps_all = not cfg.keep_layers or sorted(cfg.keep_layers) == every
    if keeps_all and cfg.head_fraction == 0 and cfg.ffn_fraction == 0:
        raise ConfigError(
            f"structural prunes nothing: keep_layers {list(cfg.keep_layers) or 'all'}, "
            "head_fraction 0, ffn_fraction 0; set ffn_fraction (e.g. 0.2), head_fraction or "
            "keep_layers to fewer layers (for int8 alone: no structural config, or no "
            "--keep-layers on the CLI)"
        )


def _check_indices(name: str, idx: Any, n: int, what: str) -> list[int]:
    """``idx``: distinct ints in 0..n-1, at least one (a layer's heads, the encoder's layers);
    a list, tuple, numpy array or tensor of integers. Returns them as Python ints."""
    if isinstance(idx, (torch.Tensor, np.ndarray)):
        idx = idx.tolist()
    if isinstance(idx, (str, bytes)) or not isinstance(idx, Sequence):
        raise ConfigError(f"{name} must be a list of indices such as [0, 2], but got {idx!r:.80}")
    ok = [isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in idx]
    bad = [i for i, good in zip(idx, ok) if not good or not 0 <= int(i) < n]
    if bad or not idx or len(set(idx)) != len(idx):
        raise ConfigError(
            f"{name} must be a non-empty subset of 0..{n - 1}, each index once (the model has "
            f"{n} {what}), but got {list(idx)}; pass distinct indices from 0..{n - 1}"
        )
    return [int(i) for i in idx]


def _check_layer(layer: Any, n: int) -> int:
    """One encoder layer index in 0..n-1 (numpy integers too)."""
    if (
        isinstance(layer, bool)
        or not isinstance(layer, numbers.Integral)
        or not 0 <= int(layer) < n
    ):
        raise ConfigError(
            f"layer must be an encoder layer index in 0..{n - 1} (the model has {n} layers), "
            f"but got {layer!r}"
        )
    return int(layer)


def drop_layers_(module: Any, keep: Sequence[int]) -> None:
    """Keep only encoder layers ``keep`` (in order) of a SentenceEncoder, in place."""
    check_sentence_encoder(module)
    layers = module.model.encoder.layer
    keep = check_keep_layers(keep, len(layers))
    module.model.encoder.layer = nn.ModuleList([layers[i] for i in sorted(keep)])
    module.model.config.num_hidden_layers = len(keep)


# ---- head pruning -----------------------------------------------------------------------------


def _attn(module: Any, i: int):
    return module.model.encoder.layer[i].attention


def head_size(module: Any) -> int:
    cfg = module.model.config
    return cfg.hidden_size // cfg.num_attention_heads


@torch.no_grad()
def head_importance(module: Any, batches: list[dict]) -> list[list[float]]:
    """Per layer, per head: 1 - mean cosine of embeddings when that head's context is zeroed."""
    d = head_size(module)
    ref = torch.cat([module(b["input_ids"], b["attention_mask"]) for b in batches])
    scores = []
    for i in range(len(module.model.encoder.layer)):
        dense = _attn(module, i).output.dense
        layer_scores = []
        for h in range(dense.in_features // d):

            def zero_head(_m, args, h=h):
                x = args[0].clone()
                x[..., h * d : (h + 1) * d] = 0  # (B, T, heads*d): this head's context
                return (x,)

            hook = dense.register_forward_pre_hook(zero_head)
            try:
                emb = torch.cat([module(b["input_ids"], b["attention_mask"]) for b in batches])
            finally:
                hook.remove()
            layer_scores.append(float(1 - nn.functional.cosine_similarity(ref, emb, dim=1).mean()))
        scores.append(layer_scores)
    return scores


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """Keep output rows (dim=0) or input columns (dim=1) ``idx`` of ``lin``."""
    w = lin.weight.detach().index_select(dim, idx)  # (out, in) -> (kept, in) or (out, kept)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach()[idx])
    return new


def prune_heads_(module: Any, layer: int, keep_heads: Sequence[int]) -> None:
    """Keep heads ``keep_heads`` of encoder layer ``layer`` by slicing Q/K/V and the output proj."""
    check_sentence_encoder(module)
    layer = _check_layer(layer, len(module.model.encoder.layer))
    d = head_size(module)
    att = _attn(module, layer)
    n_heads = att.self.num_attention_heads
    keep_heads = _check_indices("keep_heads", keep_heads, n_heads, "heads in this layer")
    idx = torch.tensor([h * d + j for h in sorted(keep_heads) for j in range(d)])
    for name in ("query", "key", "value"):
        setattr(att.self, name, _slice_linear(getattr(att.self, name), idx, 0))
    att.output.dense = _slice_linear(att.output.dense, idx, 1)
    att.self.num_attention_heads = len(keep_heads)
    att.self.all_head_size = len(keep_heads) * d


# ---- FFN neuron pruning -----------------------------------------------------------------------


@torch.no_grad()
def ffn_importance(module: Any, batches: list[dict]) -> list[torch.Tensor]:
    """Per layer (intermediate,): mean |GELU output| over real tokens * ||output.dense[:, k]||."""
    layers = module.model.encoder.layer
    sums = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    count = 0.0
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):

        def hook(_m, _args, out, i=i):
            w = mask_holder["mask"].unsqueeze(-1).to(out.dtype)  # (B, T, 1): real tokens only
            sums[i] += (out.abs() * w).sum((0, 1))  # (B, T, inter) -> (inter,)

        hooks.append(layer.intermediate.register_forward_hook(hook))  # output after GELU
    try:
        for b in batches:
            mask_holder["mask"] = b["attention_mask"]
            module(b["input_ids"], b["attention_mask"])
            count += float(b["attention_mask"].sum())
    finally:
        for h in hooks:
            h.remove()
    return [
        (s / max(count, 1.0)) * layer.output.dense.weight.detach().norm(dim=0)  # (hidden, inter)
        for s, layer in zip(sums, layers)
    ]


def prune_ffn_(module: Any, layer: int, keep: Sequence[int]) -> None:
    """Keep FFN neurons ``keep`` of encoder layer ``layer`` (intermediate rows, output columns)."""
    blk = module.model.encoder.layer[layer]
    idx = torch.tensor(sorted(keep))
    blk.intermediate.dense = _slice_linear(blk.intermediate.dense, idx, 0)
    blk.output.dense = _slice_linear(blk.output.dense, idx, 1)


@torch.no_grad()
def ffn_io(module: Any, layer: int, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s FFN on the real (unpadded) tokens: GELU outputs (N, intermediate) and the
    residual-plus-FFN sum that enters the output LayerNorm (N, hidden)."""
    blk = module.model.encoder.layer[layer]
    acts: list[torch.Tensor] = []
    sums: list[torch.Tensor] = []
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(m, args, _out):
        keep = mask_holder["mask"].bool()  # (B, T)
        acts.append(args[0][keep])  # (B, T, inter) -> (n_real, inter)
        sums.append((m.dense(args[0]) + args[1])[keep])  # pre-LayerNorm (n_real, hidden)

    h = blk.output.register_forward_hook(hook)  # BertOutput(hidden_states, input_tensor)
    try:
        for b in batches:
            mask_holder["mask"] = b["attention_mask"]
            module(b["input_ids"], b["attention_mask"])
    finally:
        h.remove()
    return torch.cat(acts), torch.cat(sums)


@torch.no_grad()
def refit_ffn_output_(
    module: Any,
    layer: int,
    acts: torch.Tensor,
    kept: torch.Tensor,
    target: torch.Tensor,
    ridge: float = 1e-3,
) -> None:
    """Least-squares refit of the pruned ``output.dense`` so it reproduces the unpruned output.

    ``acts`` (N, inter): the GELU activations recorded before pruning; ``target`` (N, hidden):
    what the unpruned projection computed from them (``acts @ W^T + b``). The kept columns and
    the bias are solved jointly by ridge regression over the N real tokens, so the removed
    neurons' mean contribution moves into the bias and their correlated part into the kept
    weights.
    """
    dense = module.model.encoder.layer[layer].output.dense  # already sliced: (hidden, kept)
    x = torch.cat([acts[:, kept], torch.ones(len(acts), 1)], 1).double()  # (N, kept + 1)
    gram = x.T @ x  # (kept + 1, kept + 1)
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    sol = torch.linalg.solve(gram, x.T @ target.double())  # (kept + 1, hidden)
    dense.weight.copy_(sol[:-1].T.to(dense.weight.dtype))
    dense.bias.copy_(sol[-1].to(dense.bias.dtype))


@torch.no_grad()
def obs_prune_ffn_(module: Any, layer: int, acts: torch.Tensor, n_keep: int, ridge: float = 1e-3):
    """Prune ``layer``'s FFN to ``n_keep`` neurons by greedy Optimal Brain Surgeon removal.

    ``acts`` (N, inter): the layer's GELU activations on real tokens. With X = [acts, 1] and
    H = X^T X (+ ridge), removing neuron k and re-solving the kept weights and bias by least
    squares raises the output error by ||W[:, k]||^2 / [H^-1]_kk (W = [output.dense.weight,
    bias], (hidden, inter + 1)); the cheapest neuron goes, W and H^-1 take the exact rank-1
    update, and so on until ``n_keep`` remain. Returns the kept neuron indices (sorted).
    """
    blk = module.model.encoder.layer[layer]
    dense = blk.output.dense
    m = acts.shape[1]
    x = torch.cat([acts, torch.ones(len(acts), 1)], 1).double()  # (N, m + 1)
    h = x.T @ x
    h += ridge * h.diagonal().mean() * torch.eye(m + 1, dtype=h.dtype)
    hinv = torch.linalg.inv(h)  # (m + 1, m + 1)
    w = torch.cat([dense.weight.detach(), dense.bias.detach()[:, None]], 1).double()
    alive = torch.ones(m + 1, dtype=torch.bool)
    for _ in range(m - n_keep):
        score = (w * w).sum(0) / hinv.diagonal()  # (m + 1,)
        score[~alive] = float("inf")
        score[m] = float("inf")  # the bias column stays
        k = int(score.argmin())
        w.addr_(w[:, k].clone(), hinv[k] / hinv[k, k], alpha=-1.0)  # in place, no temporaries
        hinv.addr_(hinv[:, k].clone(), hinv[k] / hinv[k, k], alpha=-1.0)
        alive[k] = False
        w[:, k] = 0
    keep = alive[:m].nonzero().squeeze(1)
    prune_ffn_(module, layer, keep.tolist())
    dense = blk.output.dense  # sliced to (hidden, n_keep)
    dense.weight.copy_(w[:, keep].to(dense.weight.dtype))
    dense.bias.copy_(w[:, m].to(dense.bias.dtype))
    return keep


def _ffn_keep_count(width: int, fraction: float, multiple: int) -> int:
    keep = max(1, width - int(round(fraction * width)))
    return min(width, -(-keep // multiple) * multiple)


# ---- distillation -----------------------------------------------------------------------------


def _augment(sentences: Sequence[str], rng: random.Random, n: int) -> list[str]:
    """Mix originals, random word spans (>= 4 words) and joined sentence pairs."""
    out = []
    for _ in range(n):
        r = rng.random()
        s = rng.choice(sentences)
        if r < 0.5:
            out.append(s)
        elif r < 0.8:
            words = s.split()
            if len(words) > 5:
                a = rng.randrange(0, len(words) - 4)
                b = rng.randrange(a + 4, len(words) + 1)
                s = " ".join(words[a:b])
            out.append(s)
        else:
            out.append(s + " " + rng.choice(sentences))
    return out


def _teacher_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Student layer j stands for teacher layer round((j + 1) * n_t / n_s) (hidden_states index)."""
    return [round((j + 1) * n_teacher / n_student) for j in range(n_student)]


@dataclasses.dataclass
class DistillOutcome:
    loss_first: float
    loss_last: float
    best_step: int = -1  # -1: no validation, the last step's weights
    val_spearman: dict[int, float] = dataclasses.field(default_factory=dict)


MIN_VAL_SENTENCES = 8  # fewer held-back sentences give too few pairs for a Spearman score


def _val_split(
    sentences: Sequence[str], fraction: float, rng: random.Random
) -> tuple[list[str], list[str]]:
    """(train, val): ``fraction`` of ``sentences`` at random for validation, or none if that is
    fewer than MIN_VAL_SENTENCES."""
    n_val = int(round(fraction * len(sentences)))
    if n_val < MIN_VAL_SENTENCES or len(sentences) - n_val < 1:
        return list(sentences), []
    order = list(range(len(sentences)))
    rng.shuffle(order)
    val = set(order[:n_val])
    return [t for i, t in enumerate(sentences) if i not in val], [sentences[i] for i in sorted(val)]


def hold_back_validation(
    sentences: Sequence[str], unlabelled: Sequence[str], cfg: DistillConfig
) -> tuple[list[str], list[str], list[str]]:
    """(training sentences, training unlabelled text, validation sentences).

    ``cfg.val_fraction`` of ``sentences`` and ``cfg.val_unlabelled`` lines of ``unlabelled``
    (at most half of them), chosen by ``cfg.seed``; a training line equal to a validation one
    goes too. No validation when ``val_fraction`` is 0, ``steps`` is 0 or fewer than
    MIN_VAL_SENTENCES would be held back. ``compress_structure`` holds them back before its
    scans: sentences the least-squares FFN refit has fitted score the undistilled student
    (step 0) too well.
    """
    sentences, unlabelled = list(sentences), list(unlabelled)  # read once (a generator)
    if cfg.steps == 0 or cfg.val_fraction == 0:
        return sentences, unlabelled, []
    rng = random.Random(cfg.seed)
    train, val = _val_split(sentences, cfg.val_fraction, rng)
    n_extra = min(cfg.val_unlabelled, len(unlabelled) // 2)
    held = set(rng.sample(range(len(unlabelled)), n_extra))
    val += [unlabelled[i] for i in sorted(held)]
    if len(val) < MIN_VAL_SENTENCES:
        return sentences, unlabelled, []
    seen = set(val)  # a repeated line must not be trained on while it judges the steps
    train = [t for t in train if t not in seen]
    extra = [t for i, t in enumerate(unlabelled) if i not in held and t not in seen]
    return train, extra, val


def distill_(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    cfg: DistillConfig,
    max_length: int = 128,
    log: Callable[[str], None] = lambda _m: None,
    unlabelled: Sequence[str] = (),
    val: Sequence[str] | None = None,
) -> DistillOutcome:
    """Train ``student`` (a SentenceEncoder) towards ``teacher``; keep its best weights.

    ``unlabelled``: extra text (any English) of which ``cfg.unlabelled_share`` of each batch is
    drawn, so the student copies the teacher's function rather than memorising ``sentences``.
    ``val``: sentences never trained on that choose the step whose weights are kept (step 0,
    the undistilled student, included); None = hold them back here (``hold_back_validation``),
    [] = keep the last step.
    """
    from slimkit.transformers.embed import _sentence_list, embed, pool, tokenize
    from slimkit.transformers.fidelity import embedding_fidelity

    check_sentence_encoder(student, "student")
    check_sentence_encoder(teacher, "teacher")
    if not isinstance(cfg, DistillConfig):
        raise ConfigError(
            f"cfg must be a DistillConfig, but got {type(cfg).__name__}: {cfg!r:.80}; write "
            "DistillConfig(...) or DistillConfig.from_dict({...})"
        )
    sentences = _sentence_list(sentences, one_string_ok=False)  # not one by character
    if cfg.steps == 0:
        return DistillOutcome(float("nan"), float("nan"))
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    if val is None:
        sentences, unlabelled, val = hold_back_validation(sentences, unlabelled, cfg)
    val = list(val)
    if cfg.val_fraction > 0 and not val:
        log(
            f"distill: no validation sentences (fewer than {MIN_VAL_SENTENCES} to hold back, or "
            "none given); keeping the last step"
        )
    scores: dict[int, float] = {}
    best: dict[str, torch.Tensor] = {}
    out = DistillOutcome(float("nan"), float("nan"), val_spearman=scores)
    if val:
        t_val = embed(teacher, tokenizer, val, max_length=max_length)

    def score(step: int) -> bool:
        """Validation Spearman of ``student`` now; keep its weights and return True if it is a
        new best (ties keep the earlier step)."""
        student.eval()
        with torch.no_grad():
            s_val = embed(student, tokenizer, val, max_length=max_length)
        sp = embedding_fidelity(t_val, s_val).spearman
        scores[step] = sp if sp == sp else -1.0  # NaN (constant embeddings) counts as worst
        improved = out.best_step < 0 or scores[step] > scores[out.best_step]
        if improved:
            out.best_step = step
            best.clear()
            best.update({k: v.detach().clone() for k, v in student.state_dict().items()})
        student.train(cfg.dropout)
        return improved

    if val:
        score(0)
    teacher.eval()
    n_t, n_s = len(teacher.model.encoder.layer), len(student.model.encoder.layer)
    layer_map = _teacher_layer_map(n_t, n_s)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / cfg.steps)
    )
    student.train(cfg.dropout)  # eval mode = dropout off; gradients flow the same
    losses = []
    stale = 0  # scores in a row without a new best
    for step in range(cfg.steps):
        n_extra = int(round(cfg.unlabelled_share * cfg.batch_size)) if unlabelled else 0
        n_own = cfg.batch_size - n_extra
        batch_text = (
            _augment(sentences, rng, n_own)
            if cfg.augment
            else rng.sample(list(sentences), min(n_own, len(sentences)))
        ) + [unlabelled[rng.randrange(len(unlabelled))] for _ in range(n_extra)]
        b = tokenize(tokenizer, batch_text, max_length)
        ids, mask = b["input_ids"], b["attention_mask"]
        with torch.no_grad():
            t_out = teacher.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            t_emb = pool(t_out.last_hidden_state, mask, teacher.pooling, True)
        s_out = student.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s_emb = pool(s_out.last_hidden_state, mask, student.pooling, True)
        loss = cfg.embedding_weight * (1 - (s_emb * t_emb).sum(-1)).mean()
        if cfg.pair_weight:
            # (B, D) @ (D, B) -> (B, B) cosine similarities of every pair in the batch
            diff = s_emb @ s_emb.T - t_emb @ t_emb.T
            loss = loss + cfg.pair_weight * (diff**2).mean()
        if cfg.hidden_weight:
            w = mask.unsqueeze(-1).float()  # (B, T, 1): padding tokens do not count
            hid = sum(
                (((s_out.hidden_states[j + 1] - t_out.hidden_states[t]) ** 2) * w).sum()
                / (w.sum() * s_emb.shape[-1])
                for j, t in enumerate(layer_map)
            )
            loss = loss + cfg.hidden_weight * hid / n_s
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        done = step + 1
        if val and (done % cfg.eval_every == 0 or done == cfg.steps):
            stale = 0 if score(done) else stale + 1
        if step == 0 or done % 50 == 0 or done == cfg.steps:
            extra = f", val Spearman {scores[done]:.4f}" if done in scores else ""
            log(f"distill step {done}/{cfg.steps}: loss {losses[-1]:.4f}{extra}")
        scored = done in scores  # the stop is decided at a scored step only
        if cfg.patience and scored and stale >= cfg.patience and 2 * done >= cfg.steps:
            log(f"distill: stopped at step {done}: no better val score in {stale} scores")
            break
    student.eval()
    k = max(1, min(10, len(losses) // 5))
    out.loss_first, out.loss_last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    if val:
        student.load_state_dict(best)  # score(0) stored a first copy
        log(
            f"distill: kept step {out.best_step} (val Spearman {scores[out.best_step]:.4f}; "
            f"step 0 {scores[0]:.4f}, last {scores[max(scores)]:.4f}) "
            f"of {len(val)} held-back sentences"
        )
    return out


@REGISTRY.register(EncoderStructural)
def compress_structure(
    module: Any,
    tokenizer: Any,
    cfg: EncoderStructural,
    sentences: Sequence[str],
    *,
    max_length: int = 128,
    log: Callable[[str], None] = lambda _m: None,
    unlabelled: Sequence[str] = (),
) -> tuple[nn.Module, StructuralResult]:
    """Return a smaller distilled copy of ``module`` (a SentenceEncoder) and what was done.

    ``unlabelled``: extra text for the importance scans, the FFN refit and distillation
    (default: ``cfg.unlabelled_text`` loaded from ``slimkit.data.unlabelled_text``);
    ``sentences`` come first in the scans.
    """
    from slimkit.data.unlabelled_text import load_unlabelled_text
    from slimkit.transformers.embed import _sentence_list, tokenize

    if not isinstance(cfg, EncoderStructural):
        raise ConfigError(
            f"cfg must be an EncoderStructural, but got {type(cfg).__name__}: {cfg!r:.80}; "
            "write EncoderStructural(...) or EncoderStructural.from_dict({...})"
        )
    check_sentence_encoder(module)  # load_encoder's Encoder itself: was an AttributeError
    check_prunes_something(cfg, len(module.model.encoder.layer))
    sentences = _sentence_list(sentences)  # a non-empty list of strings
    if not unlabelled and cfg.unlabelled_text:
        unlabelled = load_unlabelled_text(cfg.unlabelled_text)
        log(f"unlabelled text: {len(unlabelled)} lines of {cfg.unlabelled_text}")

    # Validation sentences are held back before the scans, so the refit never fits them.
    sentences, unlabelled, val = hold_back_validation(sentences, unlabelled, cfg.distill)
    scan_text = (sentences + unlabelled)[: cfg.scan_sentences]

    teacher = module.eval()
    student = copy.deepcopy(module).eval()
    before = sum(p.numel() for p in student.parameters())
    n = len(student.model.encoder.layer)
    keep = list(cfg.keep_layers) or list(range(n))
    if keep != list(range(n)):
        drop_layers_(student, keep)
        log(f"kept layers {sorted(keep)} of {n}")
    heads_kept: dict[str, list[int]] = {}
    scores: list[list[float]] = []
    if cfg.head_fraction > 0:
        scan = [
            tokenize(tokenizer, scan_text[i : i + 32], max_length)
            for i in range(0, len(scan_text), 32)
        ]
        scores = head_importance(student, scan)
        for i, layer_scores in enumerate(scores):
            n_heads = len(layer_scores)
            n_keep = max(1, n_heads - int(round(cfg.head_fraction * n_heads)))
            kept = sorted(sorted(range(n_heads), key=lambda h: -layer_scores[h])[:n_keep])
            prune_heads_(student, i, kept)
            heads_kept[f"encoder.layer.{i}"] = kept
        log(f"pruned heads: kept {sum(map(len, heads_kept.values()))} of {sum(map(len, scores))}")
    ffn_kept: dict[str, int] = {}
    if cfg.ffn_fraction > 0:
        scan = [
            tokenize(tokenizer, scan_text[i : i + 32], max_length)
            for i in range(0, len(scan_text), 32)
        ]
        # Layer by layer, so each layer's importance and refit see the already-pruned inputs.
        # The refit target is this layer's own unpruned FFN output on the student's inputs
        # (a teacher-side target, absorbing upstream error too, measured worse on held-out
        # sentences: Spearman 0.891 vs 0.902 at ffn_fraction 0.5, no distillation).
        for i in range(len(student.model.encoder.layer)):
            out = student.model.encoder.layer[i].output.dense
            if cfg.ffn_refit and cfg.ffn_criterion == "obs":
                acts, _ = ffn_io(student, i, scan)
                n_keep = _ffn_keep_count(acts.shape[1], cfg.ffn_fraction, cfg.ffn_multiple)
                obs_prune_ffn_(student, i, acts, n_keep)
                ffn_kept[f"encoder.layer.{i}"] = n_keep
                continue
            if cfg.ffn_refit:
                acts, _ = ffn_io(student, i, scan)
                target = out(acts)  # (N, hidden): what the unpruned projection computes
                # A neuron's mean moves into the bias with the refit; what is lost is its
                # variation: std over tokens (inter,) * its output-column norm.
                imp = acts.std(0) * out.weight.detach().norm(dim=0)
            else:
                imp = ffn_importance(student, scan)[i]
            n_keep = _ffn_keep_count(imp.numel(), cfg.ffn_fraction, cfg.ffn_multiple)
            keep_idx = imp.topk(n_keep).indices.sort().values
            prune_ffn_(student, i, keep_idx.tolist())
            if cfg.ffn_refit:
                refit_ffn_output_(student, i, acts, keep_idx, target)
            ffn_kept[f"encoder.layer.{i}"] = n_keep
        log(f"pruned FFN neurons: kept {ffn_kept}")
    dist = distill_(
        student, teacher, tokenizer, sentences, cfg.distill, max_length, log, unlabelled, val
    )
    after = sum(p.numel() for p in student.parameters())
    return student, StructuralResult(
        sorted(keep),
        heads_kept,
        ffn_kept,
        {f"encoder.layer.{i}": s for i, s in enumerate(scores)},
        before,
        after,
        dist.loss_first,
        dist.loss_last,
        dist.best_step,
        dist.val_spearman,
    )
