"""`slimkit distill`: train a student against a teacher (zoo/file/ONNX) and save it."""

from __future__ import annotations

from pathlib import Path

import typer

from slimkit.cli.common import (
    console,
    load_data,
    load_model_for,
    print_table,
    refuse_overwrite,
)


def register(app: typer.Typer) -> None:
    """Add this family's commands to the app."""

    @app.command()
    def distill(
        teacher: str = typer.Option(
            ..., help="trained teacher: slimkit model file or .onnx (logit KD)"
        ),
        student: str = typer.Option(..., help="zoo name (e.g. lenet300) or slimkit model file"),
        dataset: str = typer.Option("mnist5k", help="mnist5k | digits"),
        kd: list[str] = typer.Option(
            ["logit"], help="logit | hint | layerwise | attention (repeatable)"
        ),
        pair: list[str] = typer.Option(
            [], help="student_layer=teacher_layer for feature losses (repeatable)"
        ),
        temperature: float = typer.Option(4.0, help="softmax temperature T > 0 of logit KD"),
        alpha: float = typer.Option(
            0.9, help="weight of the soft-target term; 1-alpha on hard labels"
        ),
        epochs: int = typer.Option(5),
        lr: float = typer.Option(1e-3),
        seed: int = typer.Option(0),
        out: Path = typer.Option(Path("student.safetensors"), help="where to write the student"),
    ):
        """Distill a teacher into a student; prints accuracies and teacher agreement."""
        from slimkit import io as slim_io
        from slimkit.config import parse_enum
        from slimkit.distillation import (
            LOSS_TYPES,
            DistillConfig,
            KDKind,
            LogitKD,
            OnnxTeacher,
            agreement,
            as_teacher,
        )
        from slimkit.distillation import distill as run_distill
        from slimkit.errors import ConfigError
        from slimkit.metrics.accuracy import ort_accuracy
        from slimkit.models import ZOO
        from slimkit.training import TrainConfig, evaluate_accuracy

        if teacher in ZOO and not Path(teacher).exists():
            raise ConfigError(
                f"--teacher {teacher!r} is a zoo name, which builds an untrained model: there is "
                f"nothing to distill. Train it first (slimkit train {teacher} --dataset {dataset} "
                f"--out teacher.safetensors) and pass --teacher teacher.safetensors"
            )
        train_cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)  # checked before any work
        refuse_overwrite(
            {"--teacher": teacher, "--student": student}, {"--out": out}, model_file="--out"
        )
        data = load_data(dataset)
        t = as_teacher(
            teacher
            if teacher.lower().endswith(".onnx")
            else load_model_for(teacher, dataset, "--teacher")
        )
        s = load_model_for(student, dataset, "--student", seed=seed)  # a zoo student's init
        kinds = [parse_enum(KDKind, name, "--kd") for name in dict.fromkeys(kd)]
        # Options the chosen losses never read were dropped silently (exit 0, logit KD alone).
        if pair and kinds == [KDKind.LOGIT]:
            raise ConfigError(
                f"--pair {pair[0]} is read by the feature losses only, but --kd is logit alone; "
                "add --kd hint, layerwise or attention (and keep --kd logit to combine them)"
            )
        if KDKind.LOGIT not in kinds and (temperature != 4.0 or alpha != 0.9):
            raise ConfigError(
                f"--temperature/--alpha set the logit loss, but --kd is "
                f"{[k.value for k in kinds]}; add --kd logit or drop them"
            )
        losses: list = []
        for kind in kinds:
            if kind is KDKind.LOGIT:
                losses.append(LogitKD(temperature=temperature, alpha=alpha))
            elif not pair:
                raise ConfigError(
                    f"--kd {kind.value} needs at least one --pair student_layer=teacher_layer"
                )
            else:
                losses.append(LOSS_TYPES[kind].from_dict({"pairs": tuple(pair)}))
        cfg = DistillConfig(losses=tuple(losses), train=train_cfg)
        before = evaluate_accuracy(s, data.test)
        run_distill(s, t, data, cfg)  # checks student and teacher against the data first
        # The teacher's accuracy after: an ONNX teacher for other images was a raw ORT error here.
        if isinstance(t, OnnxTeacher):
            t_acc = ort_accuracy(t.session, data.test)
        else:
            assert t.module is not None
            t_acc = evaluate_accuracy(t.module, data.test)
        after = evaluate_accuracy(s, data.test)
        agree = agreement(s, t, data.test)
        n = slim_io.save(s, out)
        params = sum(p.numel() for p in s.parameters())
        print_table(
            "distillation",
            ["name", "accuracy", "params"],
            [
                [
                    "teacher",
                    t_acc,
                    sum(p.numel() for p in t.module.parameters()) if t.module else "-",
                ],
                ["student before", before, params],
                ["student after", after, params],
            ],
        )
        console.print(f"student/teacher top-1 agreement {agree:.4f}; wrote {out} ({n:,} bytes)")
