import copy

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.transformers import (
    DistillConfig,
    EncoderStructural,
    compress_structure,
    drop_layers_,
    embed,
    embedding_fidelity,
    export_encoder,
    prune_heads_,
    tokenize,
)


def test_prune_all_heads_kept_is_identity_and_pruning_shrinks(encoder, sentence_module, sentences):
    batch = tokenize(encoder.tokenizer, sentences, 64)
    ref = sentence_module(**batch)
    m = copy.deepcopy(sentence_module)
    prune_heads_(m, 0, list(range(12)))
    torch.testing.assert_close(m(**batch), ref, atol=1e-6, rtol=0)
    before = sum(p.numel() for p in m.parameters())
    prune_heads_(m, 1, [0, 3, 5, 7])  # drop 8 heads of 32 dims
    removed = before - sum(p.numel() for p in m.parameters())
    assert removed == 8 * 32 * (3 * 384 + 3) + 8 * 32 * 384  # Q/K/V rows + biases, O columns
    assert m.model.encoder.layer[1].attention.self.query.out_features == 128
    assert m(**batch).shape == ref.shape


def test_drop_layers_errors_and_shape(sentence_module):
    m = copy.deepcopy(sentence_module)
    with pytest.raises(ConfigError, match="subset of 0..5"):
        drop_layers_(m, [0, 7])
    drop_layers_(m, [0, 2, 4])
    assert len(m.model.encoder.layer) == 3
    with pytest.raises(ConfigError, match="distinct"):
        EncoderStructural(keep_layers=(1, 1))


@pytest.mark.slow
def test_layer_drop_heads_distill_export(tmp_path, encoder, sentence_module, sentences):
    cfg = EncoderStructural(
        keep_layers=(0, 2, 4),
        head_fraction=0.25,
        scan_sentences=8,
        distill=DistillConfig(steps=12, batch_size=8, lr=1e-4),
    )
    student, res = compress_structure(
        sentence_module, encoder.tokenizer, cfg, sentences, max_length=64
    )
    assert res.kept_layers == [0, 2, 4] and len(student.model.encoder.layer) == 3
    assert all(len(h) == 9 for h in res.heads_kept.values())
    assert res.params_after < res.params_before
    assert res.distill_loss_last < 0.9 * res.distill_loss_first
    # The pruned student still exports with dynamic axes and matches PyTorch.
    out = export_encoder(student, encoder.tokenizer, tmp_path / "s.onnx", atol=1e-4)
    assert out.max_abs_diff < 1e-4
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    fid = embedding_fidelity(ref, embed(student, encoder.tokenizer, sentences), k=2)
    # 12 steps only start recovery (the benchmark distills 300): still a usable direction.
    assert fid.cosine_mean > 0.3 and fid.topk_agreement >= 0.5


def test_prune_ffn_all_kept_is_identity_and_shrinks(encoder, sentence_module, sentences):
    from slimkit.transformers.structural import prune_ffn_

    batch = tokenize(encoder.tokenizer, sentences, 64)
    ref = sentence_module(**batch)
    m = copy.deepcopy(sentence_module)
    prune_ffn_(m, 0, list(range(1536)))
    torch.testing.assert_close(m(**batch), ref, atol=1e-6, rtol=0)
    before = sum(p.numel() for p in m.parameters())
    prune_ffn_(m, 2, list(range(0, 1536, 2)))  # keep 768 of 1536 neurons
    blk = m.model.encoder.layer[2]
    assert blk.intermediate.dense.out_features == 768 and blk.output.dense.in_features == 768
    assert before - sum(p.numel() for p in m.parameters()) == 768 * (384 + 1) + 768 * 384


def test_ffn_refit_recovers_more_than_plain_pruning(encoder, sentence_module, sentences):
    ref = embed(sentence_module, encoder.tokenizer, sentences)
    cos = {}
    for refit in (False, True):
        cfg = EncoderStructural(
            ffn_fraction=0.5, ffn_refit=refit, distill=DistillConfig(steps=0), scan_sentences=8
        )
        student, res = compress_structure(
            sentence_module, encoder.tokenizer, cfg, sentences, max_length=64
        )
        assert res.ffn_kept == {f"encoder.layer.{i}": 768 for i in range(6)}
        fid = embedding_fidelity(ref, embed(student, encoder.tokenizer, sentences), k=2)
        cos[refit] = fid.cosine_mean
    # the refit is fitted on the same 8 sentences (~170 tokens per layer)
    assert cos[True] > cos[False] + 0.05, cos


def test_ffn_fraction_is_validated():
    with pytest.raises(ConfigError, match="ffn_fraction"):
        EncoderStructural(ffn_fraction=1.0)


def test_distill_draws_the_unlabelled_share_of_each_batch(encoder, sentence_module, sentences):
    from slimkit.transformers import structural

    seen: list[list[str]] = []

    class Recording:
        def __call__(self, text, **kw):
            if "return_tensors" in kw:  # the batch itself, not tokenize()'s length check
                seen.append(list(text))
            return encoder.tokenizer(text, **kw)

    extra = ["An unlabelled line about gardening in spring.", "Another one about the sea."]
    student = copy.deepcopy(sentence_module)
    for share, n_extra in ((1.0, 4), (0.5, 2)):
        seen.clear()
        cfg = DistillConfig(steps=2, batch_size=4, unlabelled_share=share, augment=False)
        structural.distill_(
            student, sentence_module, Recording(), sentences, cfg, 32, unlabelled=extra
        )
        assert len(seen) == 2
        assert all(sum(t in extra for t in batch) == n_extra for batch in seen), seen
        assert all(len(batch) == 4 for batch in seen)


def test_unlabelled_text_feeds_the_ffn_scan(encoder, sentence_module, sentences):
    logs: list[str] = []
    cfg = EncoderStructural(
        ffn_fraction=0.5,
        scan_sentences=16,
        unlabelled_text="distill_en",
        distill=DistillConfig(steps=0),
    )
    _student, res = compress_structure(
        sentence_module, encoder.tokenizer, cfg, sentences, max_length=64, log=logs.append
    )
    assert any(m.startswith("unlabelled text: ") and "distill_en" in m for m in logs), logs
    assert res.ffn_kept["encoder.layer.0"] == 768
    with pytest.raises(ConfigError, match="unlabelled_text must be"):
        EncoderStructural(unlabelled_text="wiki")


def test_obs_ffn_pruning_keeps_identity_and_beats_variance_ranking(
    encoder, sentence_module, sentences
):
    from slimkit.transformers.structural import (
        ffn_io,
        obs_prune_ffn_,
        prune_ffn_,
        refit_ffn_output_,
    )

    scan = [tokenize(encoder.tokenizer, sentences, 64)]
    acts, _ = ffn_io(sentence_module, 1, scan)  # (N tokens, 1536)
    target = sentence_module.model.encoder.layer[1].output.dense(acts).detach()
    # keeping every neuron changes nothing (up to the ridge term)
    m = copy.deepcopy(sentence_module)
    keep = obs_prune_ffn_(m, 1, acts, 1536)
    assert keep.tolist() == list(range(1536))
    torch.testing.assert_close(
        m.model.encoder.layer[1].output.dense(acts), target, atol=2e-3, rtol=0
    )

    errors = {}
    for method in ("obs", "variance"):
        m = copy.deepcopy(sentence_module)
        dense = m.model.encoder.layer[1].output.dense
        if method == "obs":
            kept = obs_prune_ffn_(m, 1, acts, 384)
        else:
            imp = acts.std(0) * dense.weight.detach().norm(dim=0)
            kept = imp.topk(384).indices.sort().values
            prune_ffn_(m, 1, kept.tolist())
            refit_ffn_output_(m, 1, acts, kept, target)
        assert m.model.encoder.layer[1].output.dense.weight.shape == (384, 384)
        out = m.model.encoder.layer[1].output.dense(acts[:, kept]).detach()
        errors[method] = float(((out - target) ** 2).mean())
    assert errors["obs"] < 0.9 * errors["variance"], errors


def test_distill_keeps_the_best_validated_step(encoder, sentence_module):
    """With a learning rate that wrecks the student, the held-back sentences pick step 0: the
    student comes back exactly as it went in, the scores say why, and training stops after
    ``patience`` scores without a new best, once half the steps are done."""
    from slimkit.data import load_corpus
    from slimkit.transformers.structural import DistillConfig, distill_

    text = load_corpus()[:40]
    student = copy.deepcopy(sentence_module)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = DistillConfig(steps=10, batch_size=4, lr=0.5, val_fraction=0.25, eval_every=2, patience=2)
    logs: list[str] = []
    out = distill_(student, sentence_module, encoder.tokenizer, text, cfg, 64, logs.append)
    # stale twice at step 4, but 4 < 10 / 2: the stop waits for step 6
    assert sorted(out.val_spearman) == [0, 2, 4, 6]
    assert out.best_step == 0 and out.val_spearman[0] > out.val_spearman[6]
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert any("kept step 0" in m and "10 held-back" in m for m in logs)
    assert any("stopped at step 6" in m for m in logs)
    with pytest.raises(ConfigError, match="val_fraction"):
        DistillConfig(val_fraction=0.95)


def test_validation_is_held_back_from_training_and_scans():
    """The validation sentences are val_fraction of the task sentences plus val_unlabelled
    unlabelled lines (at most half of them), disjoint from what trains, fixed by the seed; none
    without val_fraction or steps."""
    from slimkit.transformers.structural import hold_back_validation

    task = [f"task sentence {i}" for i in range(40)]
    extra = [f"extra line {i}" for i in range(30)]
    cfg = DistillConfig(val_fraction=0.25, val_unlabelled=10)
    train, unl, val = hold_back_validation(task, extra, cfg)
    assert len(val) == 10 + 10 and len(train) == 30 and len(unl) == 20
    assert sorted(train + [v for v in val if v.startswith("task")]) == sorted(task)
    assert sorted(unl + [v for v in val if v.startswith("extra")]) == sorted(extra)
    assert hold_back_validation(task, extra, cfg) == (train, unl, val)  # same seed, same split
    # at most half of the unlabelled lines; few task sentences still validate on unlabelled ones
    _, unl, val = hold_back_validation(task[:3], extra, DistillConfig(val_unlabelled=1000))
    assert len(unl) == 15 and len(val) == 15
    for off in (DistillConfig(val_fraction=0.0), DistillConfig(steps=0)):
        assert hold_back_validation(task, extra, off) == (task, extra, [])
    # unlabelled text as a generator is read once: too few to validate on keeps all of it
    _, unl, val = hold_back_validation(task[:3], (t for t in extra[:4]), DistillConfig())
    assert unl == extra[:4] and val == []
    # a line in both texts that is held back is trained on under neither
    train, unl, val = hold_back_validation(task, task[:20] + extra[:20], cfg)
    assert val and not set(val) & (set(train) | set(unl))
    with pytest.raises(ConfigError, match="val_unlabelled"):
        DistillConfig(val_unlabelled=-1)


def test_compress_structure_scans_and_trains_without_the_validation_sentences(
    encoder, sentence_module, monkeypatch
):
    """compress_structure holds the validation sentences back before its FFN scan and refit
    (a refit that has fitted them scores step 0 too well) and hands them to distillation."""
    import slimkit.transformers.structural as structural
    from slimkit.data import load_corpus

    text = load_corpus()[:40]
    extra = load_corpus()[40:80]
    seen: dict[str, list] = {"scanned": []}
    real_ffn_io, real_distill = structural.ffn_io, structural.distill_

    def spy_ffn_io(module, layer, batches):
        for b in batches:
            seen["scanned"] += encoder.tokenizer.batch_decode(
                b["input_ids"], skip_special_tokens=True
            )
        return real_ffn_io(module, layer, batches)

    def spy_distill(*args, **kwargs):
        seen["train"], seen["unlabelled"], seen["val"] = args[3], args[7], args[8]
        return real_distill(*args, **kwargs)

    monkeypatch.setattr(structural, "ffn_io", spy_ffn_io)
    monkeypatch.setattr(structural, "distill_", spy_distill)
    cfg = EncoderStructural(
        ffn_fraction=0.5,
        scan_sentences=200,
        distill=DistillConfig(steps=2, batch_size=4, val_fraction=0.25, val_unlabelled=8),
    )
    _, res = compress_structure(
        sentence_module, encoder.tokenizer, cfg, text, max_length=64, unlabelled=extra
    )
    val = set(seen["val"])
    assert len(val) == 10 + 8 and res.distill_best_step >= 0
    assert not val & set(seen["train"]) and not val & set(seen["unlabelled"])
    scanned = {s.lower() for s in seen["scanned"]}
    assert scanned and not {v.lower() for v in val} & scanned
