"""`slimkit distill --seed` sets a zoo student's initial weights, not only the training order."""

from slimkit.cli import main


def test_distill_seed_sets_a_zoo_students_initial_weights(capsys, tmp_path):
    import torch

    from slimkit import io as slim_io

    teacher = tmp_path / "t.safetensors"
    argv = ["train", "lenet300", "--dataset", "digits", "--epochs", "0", "--out", str(teacher)]
    assert main(argv) == 0
    students = []
    for i, seed in enumerate((1, 2, 1)):
        out = tmp_path / f"s{i}.safetensors"
        argv = ["distill", "--teacher", str(teacher), "--student", "lenet300"]
        argv += ["--dataset", "digits", "--epochs", "0", "--seed", str(seed), "--out", str(out)]
        torch.manual_seed(i)  # another global state each run: only --seed may decide
        assert main(argv) == 0
        students.append(slim_io.load(out).fc1.weight.detach())
    assert not torch.equal(students[0], students[1])
    assert torch.equal(students[0], students[2])  # the same seed, the same student
