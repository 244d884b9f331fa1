import dataclasses

import pytest
from torch import nn

from slimkit.config import (
    SlimConfig,
    check_int,
    check_range,
    get_module,
    select_modules,
    set_module,
)
from slimkit.errors import ConfigError, TargetError
from slimkit.models import build_model
from slimkit.registry import Registry


def test_exact_name_then_regex_and_ignore_wins():
    m = build_model("lenet5")
    assert list(select_modules(m)) == ["conv1", "conv2", "fc1", "fc2"]
    assert list(select_modules(m, targets=["fc1"])) == ["fc1"]
    assert list(select_modules(m, targets=["re:fc.*"])) == ["fc1", "fc2"]
    assert list(select_modules(m, targets=["re:.*"], ignore=["fc2", "re:conv.*"])) == ["fc1"]
    assert list(select_modules(m, targets=["re:conv."], types=(nn.Conv2d,))) == ["conv1", "conv2"]


def test_no_match_lists_near_matches():
    m = build_model("lenet5")
    with pytest.raises(TargetError, match=r"'fc3'.*near matches: \['fc2', 'fc1'\]"):
        select_modules(m, targets=["fc3"])
    with pytest.raises(ConfigError, match="not a valid regex"):
        select_modules(m, targets=["re:("])


def test_ignore_typo_is_an_error_but_any_real_layer_may_be_ignored():
    m = build_model("lenet5")
    # a misspelled ignore used to match nothing silently, so the layer was compressed anyway
    with pytest.raises(TargetError, match=r"ignore 'fc9' matches no layer; near matches"):
        select_modules(m, ignore=["fc9"])
    with pytest.raises(TargetError, match=r"'re:head.\*' matches no layer; the model's layers are"):
        select_modules(m, ignore=["re:head.*"])
    # a layer this technique would skip anyway (a Conv for a Linear-only method) is fine
    assert list(select_modules(m, ignore=["conv1"], types=(nn.Linear,))) == ["fc1", "fc2"]


def test_get_and_set_module():
    m = build_model("resnet", image_size=8)
    conv = get_module(m, "layers.0.conv1")
    assert isinstance(conv, nn.Conv2d)
    set_module(m, "layers.0.conv1", nn.Identity())
    assert isinstance(get_module(m, "layers.0.conv1"), nn.Identity)
    with pytest.raises(TargetError, match="near matches"):
        get_module(m, "layers.0.conv9")
    # nothing close: the model's layer names instead of an empty list
    with pytest.raises(TargetError, match=r"'zzz'; the model's layers are: \['stem'"):
        get_module(m, "zzz")


def test_range_errors_state_rule_and_value():
    with pytest.raises(ConfigError, match=r"bits must be in 1..8, but got 12"):
        check_int("bits", 12, 1, 8)
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), but got 1.0"):
        check_range("sparsity", 1.0, 0, 1, high_open=True)
    with pytest.raises(ConfigError, match="finite number"):
        check_range("lr", float("nan"), 0, 1)


@dataclasses.dataclass(frozen=True)
class _Cfg(SlimConfig):
    bits: int = 8
    targets: tuple[str, ...] = ()

    def validate(self) -> None:
        check_int("bits", self.bits, 1, 8)


def test_config_from_dict_roundtrip_and_unknown_keys():
    cfg = _Cfg.from_dict({"bits": 4, "targets": ["fc1"]})
    assert cfg.targets == ("fc1",)
    assert _Cfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError,
        match=r"unknown option\(s\) \['bitz'\]; valid options are \['bits', 'targets'\]",
    ):
        _Cfg.from_dict({"bitz": 4})
    with pytest.raises(ConfigError, match="bits must be in 1..8, but got 0"):
        _Cfg(bits=0)
    for bad in (True, "static", [4]):  # were TypeErrors ("'bool' object is not iterable")
        with pytest.raises(ConfigError, match=r"_Cfg options must be a mapping .* \['bits', "):
            _Cfg.from_dict(bad)


def test_registry_fails_loudly():
    reg = Registry("demo")

    @reg.register(_Cfg)
    def handler(model, cfg):
        return cfg.bits

    assert reg.lookup(_Cfg())(None, _Cfg(bits=3)) == 3
    with pytest.raises(ConfigError, match=r"int is not a demo config; valid configs: \['_Cfg'\]"):
        reg.lookup(5)
    with pytest.raises(RuntimeError, match="registered twice"):
        reg.register(_Cfg)(handler)


def test_flags_and_name_lists_are_type_checked():
    """A YAML ``symmetric: yes``-style string or a bare string for a name list fails at once
    with the rule, the value and the fix, instead of acting as something else later."""
    from slimkit.pruning.magnitude import UnstructuredPruning
    from slimkit.quantization.linear import LinearQuantization

    with pytest.raises(ConfigError, match=r"symmetric must be true or false, but got 'yes'"):
        LinearQuantization.from_dict({"bits": 4, "symmetric": "yes"})
    with pytest.raises(ConfigError, match=r"per_channel must be true or false, but got 1"):
        LinearQuantization(bits=4, per_channel=1)
    with pytest.raises(ConfigError, match=r"got the string 'fc1'; write \['fc1'\]"):
        UnstructuredPruning.from_dict({"sparsity": 0.5, "targets": "fc1"})
    with pytest.raises(ConfigError, match=r"ignore must be a list of strings, but got \(3,\)"):
        UnstructuredPruning(sparsity=0.5, ignore=[3])
    ok = UnstructuredPruning.from_dict({"sparsity": 0.5, "targets": ["fc1"]})
    assert ok.targets == ("fc1",)


def test_ignoring_a_block_ignores_the_layers_inside_it():
    m = build_model("resnet", image_size=8)
    every = select_modules(m, types=(nn.Conv2d,))
    kept = select_modules(m, ignore=["layers.0"], types=(nn.Conv2d,))
    gone = sorted(set(every) - set(kept))
    assert gone and all(n.startswith("layers.0.") for n in gone)
    assert not any(n.startswith("layers.0.") for n in kept)
