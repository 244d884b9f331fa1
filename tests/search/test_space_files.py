"""A --space file that is missing, a folder or not YAML is a one-line ConfigError naming the
file, before any study or database is created."""

import pytest

from slimkit.cli import main
from slimkit.errors import ConfigError
from slimkit.search import SearchSpace


def test_missing_folder_or_malformed_space_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'.*nope.yaml' does not exist"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        SearchSpace.from_yaml(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1"):
        SearchSpace.from_yaml(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00depth")
    with pytest.raises(ConfigError, match="not UTF-8"):
        SearchSpace.from_yaml(binary)


@pytest.mark.parametrize("command", ["hpo", "nas"])
@pytest.mark.parametrize("content", [None, "lr: [a\n"])
def test_cli_bad_space_file_exits_2_in_one_line_and_creates_nothing(
    command, content, tmp_path, capsys
):
    space = tmp_path / "space.yaml"
    if content is not None:
        space.write_text(content)
    db = tmp_path / "s.db"
    rc = main(["search", command, "--space", str(space), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("slimkit: error: ") and err.count("\n") == 1
    assert "does not exist" in err if content is None else "not valid YAML" in err
    assert not db.exists()
