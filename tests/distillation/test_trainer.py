"""Trainer: gradients reach only student and adapters, ONNX teachers, shape errors, learning."""

import copy

import pytest
import torch

from slimkit.distillation import (
    AttentionTransfer,
    DistillConfig,
    DistillLoss,
    HintKD,
    LayerwiseKD,
    LogitKD,
    OnnxTeacher,
    agreement,
    distill,
    distill_,
    kd_loss_fn,
    recover,
)
from slimkit.errors import ConfigError
from slimkit.export.onnx import export_bytes
from slimkit.models import build_model
from slimkit.training import TrainConfig, evaluate_accuracy


def test_gradients_reach_only_student_and_adapters(teacher):
    torch.manual_seed(0)
    teacher.zero_grad(set_to_none=True)  # training left .grad on the fixture's parameters
    student = build_model("resnet", image_size=8, width=4)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    loss = DistillLoss(
        student,
        teacher,
        [
            LogitKD(),
            HintKD(pairs=[("layers.2", "conv1")]),  # (16, 8, 8) -> (20, 8, 8): 1x1 conv adapter
            LayerwiseKD(pairs=[("flatten", "fc1", 1.0)]),  # (16,) -> (500,): linear adapter
            AttentionTransfer(pairs=[("layers.0", "conv1")]),  # 4 vs 20 channels, both 8x8
        ],
    )
    with loss.attached(x):
        assert sorted(loss.adapters) == ["1_0", "2_0"]
        assert isinstance(loss.adapters["1_0"], torch.nn.Conv2d)
        assert isinstance(loss.adapters["2_0"], torch.nn.Linear)
        value = loss(student, x, y, student(x))
        value.backward()
    assert torch.isfinite(value) and float(value.detach()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.adapters.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_shape_mismatch_without_adapter_gives_both_shapes(digits_data, teacher):
    student = build_model("lenet300", image_size=8)
    cfg = DistillConfig(
        losses=(HintKD(pairs=[("fc2", "fc1")], adapter=False),),
        train=TrainConfig(epochs=1, max_batches=1),
    )
    with pytest.raises(
        ConfigError,
        match=r"student feature shape \(100,\) differs from teacher feature shape \(500,\)",
    ):
        distill(student, teacher, digits_data, cfg)
    resnet = build_model("resnet", image_size=8, width=4)
    at = DistillConfig(losses=(AttentionTransfer(pairs=[("layers.0", "pool2")]),))
    with pytest.raises(
        ConfigError, match=r"the student gives \(4, 8, 8\) and the teacher \(50, 2, 2\)"
    ):
        distill(resnet, teacher, digits_data, at)


def test_onnx_teacher_logit_kd(digits_data, teacher, tmp_path):
    x = digits_data.example_input(8)
    path = tmp_path / "teacher.onnx"
    path.write_bytes(export_bytes(teacher, x))
    onnx_teacher = OnnxTeacher(path)
    assert float((onnx_teacher(x) - teacher(x).detach()).abs().max()) < 1e-4
    student = build_model("lenet300", image_size=8)
    before = agreement(student, teacher, digits_data.test)
    distill(
        student,
        str(path),
        digits_data,
        DistillConfig(losses=(LogitKD(temperature=4.0, alpha=0.9),), train=TrainConfig(epochs=2)),
    )
    after = agreement(student, onnx_teacher, digits_data.test)
    assert after > max(before + 0.4, 0.75)
    with pytest.raises(ConfigError, match="use LogitKD with an ONNX teacher"):
        DistillLoss(student, onnx_teacher, [HintKD(pairs=[("fc1", "fc1")])])


def test_short_distillation_improves_agreement(digits_data, teacher):
    torch.manual_seed(0)
    student = build_model("resnet", image_size=8, width=4)  # 5k params vs the teacher's 131k
    before = agreement(student, teacher, digits_data.test)
    cfg = DistillConfig(
        losses=(LogitKD(),),
        train=TrainConfig(epochs=4, lr=1e-2),
    )
    distill_(student, cfg, teacher=teacher, data=digits_data)
    after = agreement(student, teacher, digits_data.test)
    assert before < 0.3 and after > 0.7, (before, after)


def test_recovery_loss_snapshots_teacher_and_recovers(digits_data, teacher):
    dense_acc = evaluate_accuracy(teacher, digits_data.test)
    model = copy.deepcopy(teacher)
    fn = kd_loss_fn(model, temperature=4.0, alpha=0.9)
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(model.fc1.weight.shape, generator=gen) > 0.95  # keep 5 % of fc1
    with torch.no_grad():  # prune the copy in place after the loss took its snapshot
        model.fc1.weight.mul_(mask)
    x = digits_data.example_input(16)
    assert torch.equal(fn.teacher(x), teacher(x).detach())  # type: ignore[attr-defined]
    damaged = evaluate_accuracy(model, digits_data.test)

    def reapply(m):
        with torch.no_grad():
            m.fc1.weight.mul_(mask)

    recover(model, teacher, digits_data, TrainConfig(epochs=2), after_step=reapply)
    recovered = evaluate_accuracy(model, digits_data.test)
    assert int((model.fc1.weight != 0).sum()) <= int(mask.sum())
    assert recovered >= damaged + 0.2 and recovered > dense_acc - 0.15, (
        dense_acc,
        damaged,
        recovered,
    )


def test_config_round_trip_and_kind_typo():
    cfg = DistillConfig(
        losses=(LogitKD(temperature=2.0), AttentionTransfer(pairs=[("a", "b")])),
        train=TrainConfig(epochs=1),
    )
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError, match=r"loss kind must be one of \['logit', 'hint', 'layerwise', 'attention'\]"
    ):
        DistillConfig.from_dict({"losses": [{"kind": "logits"}]})
    with pytest.raises(ConfigError, match="at most one LogitKD"):
        DistillConfig(losses=(LogitKD(), LogitKD()))


def test_cli_distill(digits_data, teacher, tmp_path):
    from slimkit import io as slim_io
    from slimkit.cli import main

    tpath, spath = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    slim_io.save(teacher, tpath)
    args = [
        "distill",
        "--teacher",
        str(tpath),
        "--student",
        "lenet300",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--out",
        str(spath),
    ]
    assert main(args) == 0
    student = slim_io.load(spath)
    assert agreement(student, teacher, digits_data.test) > 0.6
    assert main([*args[:-2], "--temperature", "0", "--out", str(spath)]) == 2
    assert main([*args[:-2], "--kd", "hint", "--pair", "fc9=fc1", "--out", str(spath)]) == 2


def test_shared_contract(digits_data, teacher):
    """A distilled model still runs, saves/loads exactly and exports to ONNX (no hook residue)."""
    from slimkit.testing import check_contract

    frozen = copy.deepcopy(teacher)
    cfg = DistillConfig(
        losses=(LogitKD(), HintKD(pairs=[("conv2", "conv2")])),
        train=TrainConfig(epochs=1, max_batches=5, lr=1e-4),
    )
    result = check_contract(
        teacher,
        lambda m: distill(m, frozen, digits_data, cfg),
        digits_data.example_input(4),
        min_sqnr_db=15.0,  # a few small steps from the teacher's own weights stay close to it
    )
    assert result.roundtrip_max_diff == 0.0


def test_cached_teacher_reuses_logits_per_sample(digits_data, teacher):
    from slimkit.distillation import CachedTeacher

    cached = CachedTeacher(teacher)
    x = digits_data.example_input(16)
    first = cached(x)
    assert torch.equal(first, teacher(x).detach()) and (cached.hits, cached.misses) == (0, 16)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    again = cached(x[perm])  # same samples, new order: all served from the cache
    assert torch.equal(again, first[perm]) and (cached.hits, cached.misses) == (16, 16)


def test_cached_teacher_serves_features_like_the_live_teacher(digits_data, teacher):
    from slimkit.distillation import CachedTeacher

    torch.manual_seed(0)
    student = build_model("resnet", image_size=8, width=4)
    x, y = digits_data.example_input(8), torch.arange(8) % 10
    cfgs = [
        LogitKD(),
        HintKD(pairs=[("layers.2", "conv1")]),
        AttentionTransfer(pairs=[("layers.0", "conv1")]),
    ]
    cached = CachedTeacher(teacher)
    values = []
    for t in (teacher, cached, cached):  # live, cache miss, cache hit
        torch.manual_seed(1)  # same adapter initialisation
        loss = DistillLoss(student, t, cfgs)
        with loss.attached(x):
            values.append(float(loss(student, x, y, student(x)).detach()))
    assert values[0] == pytest.approx(values[1], rel=1e-6) and values[1] == values[2]
    assert cached.hits >= 8
    assert sum(len(m._forward_hooks) for m in teacher.modules()) == 0


def test_pruned_and_quantized_slimkit_models_as_teachers(digits_data, teacher):
    """Teachers compressed by other families: hooks, logits and feature losses still work."""
    import slimkit as sk
    from slimkit.pruning import MagnitudePruning
    from slimkit.quantization import LinearQuantization

    pruned = sk.prune_(copy.deepcopy(teacher), MagnitudePruning(sparsity=0.5))
    quantized = sk.quantize_(copy.deepcopy(teacher), LinearQuantization(bits=8))
    for compressed in (pruned, quantized):
        student = build_model("lenet300", image_size=8)
        cfg = DistillConfig(
            losses=(LogitKD(), HintKD(pairs=[("fc2", "fc1")])),
            train=TrainConfig(epochs=2),
        )
        distill(student, compressed, digits_data, cfg)
        assert agreement(student, compressed, digits_data.test) > 0.7
        assert sum(len(m._forward_hooks) for m in compressed.modules()) == 0


def test_a_pruned_student_stays_pruned_and_a_quantized_one_is_refused(digits_data, teacher):
    import slimkit as sk

    torch.manual_seed(0)
    student = build_model("lenet300", image_size=8)
    sk.prune_(student, sk.MagnitudePruning(sparsity=0.8))
    sk.finalize_(student)  # plain zeros, no masks: nothing but distill itself keeps them
    zeros = {n: p == 0 for n, p in student.named_parameters() if p.dim() > 1}
    steps = []
    cfg = DistillConfig(losses=(LogitKD(),), train=TrainConfig(epochs=1, lr=1e-2))
    distill(student, teacher, digits_data, cfg, after_step=lambda m: steps.append(1))
    assert steps  # the caller's own hook still runs
    for n, p in student.named_parameters():
        if n in zeros:  # was: every zero trained away (a dense model came back)
            assert torch.equal(p == 0, zeros[n]), n
    q = build_model("lenet300", image_size=8)
    sk.quantize_(q, sk.LinearQuantization(bits=4))
    with pytest.raises(ConfigError, match=r"already quantized .* quantize after"):
        distill(q, teacher, digits_data, cfg)  # was: trained off the 4-bit grid silently


def test_onnx_teacher_for_other_images_is_a_config_error(digits_data, teacher, tmp_path):
    big = build_model("lenet5", image_size=28)
    path = tmp_path / "mnist_teacher.onnx"
    path.write_bytes(export_bytes(big, torch.zeros(1, 1, 28, 28)))
    cfg = DistillConfig(losses=(LogitKD(),), train=TrainConfig(epochs=1))
    student = build_model("lenet300", image_size=8)
    # was onnxruntime's InvalidArgument traceback (an Exception, not a RuntimeError)
    with pytest.raises(ConfigError, match=r"teacher does not take the data's inputs"):
        distill(student, str(path), digits_data, cfg)


def test_cli_distill_refuses_options_its_losses_never_read(teacher, tmp_path, capsys):
    from slimkit import io as slim_io
    from slimkit.cli import main

    tpath, spath = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    slim_io.save(teacher, tpath)
    base = ["distill", "--teacher", str(tpath), "--student", "lenet300", "--dataset", "digits"]
    # each ran logit KD alone and exited 0
    assert main([*base, "--pair", "fc2=fc1", "--out", str(spath)]) == 2
    assert "add --kd hint, layerwise or attention" in capsys.readouterr().err
    hint = ["--kd", "hint", "--pair", "fc1=fc1", "--temperature", "2"]
    assert main([*base, *hint, "--out", str(spath)]) == 2
    assert "add --kd logit or drop them" in capsys.readouterr().err
    assert not spath.exists()


def test_onnx_teacher_refuses_threads_zero_up_front(tmp_path):
    # make_session refused threads=0 only after the file was found; a caller's session never
    # met the check, so OnnxTeacher(session, threads=0) passed without a word.
    class Session:
        def get_inputs(self):
            return [type("Input", (), {"name": "x"})()]

        def run(self, names, feed):  # pragma: no cover - never reached
            raise AssertionError

    for source in (str(tmp_path / "missing.onnx"), Session()):
        with pytest.raises(ConfigError, match=r"^threads must be 1\.\.256, but got 0;"):
            OnnxTeacher(source, threads=0)
    with pytest.raises(ConfigError, match=r"threads must be 1\.\.256, but got True"):
        OnnxTeacher(Session(), threads=True)
    assert OnnxTeacher(Session(), threads=2).input_name == "x"


def test_distill_probes_the_student_once(digits_data, teacher, tmp_path, probe_calls):
    # distill() probed the student with check_fits, then train() probed it again: the same
    # pass on the same model and data (and, with device="cuda", on a model already moved off
    # the data's CPU). The API and `slimkit distill` each probe once, before any training.
    from slimkit import io as slim_io
    from slimkit.cli import main

    calls = probe_calls
    student = build_model("lenet300", image_size=8, seed=0)
    cfg = DistillConfig(train=TrainConfig(epochs=1, max_batches=2))
    distill(student, teacher, digits_data, cfg)
    assert calls == ["distill (student)"]

    calls.clear()
    tpath, spath = tmp_path / "t.safetensors", tmp_path / "s.safetensors"
    slim_io.save(teacher, tpath)
    argv = ["distill", "--teacher", str(tpath), "--student", "lenet300", "--dataset", "digits"]
    assert main([*argv, "--epochs", "0", "--out", str(spath)]) == 0
    assert calls == ["distill (student)"]
