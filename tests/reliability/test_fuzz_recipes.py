"""Fuzz: malformed recipes and config values end in slimkit's own error with a message — never
a raw traceback from torch, pydantic or YAML internals."""

import importlib

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit.errors import SlimkitError
from slimkit.pipeline.recipe import STAGE_KINDS, from_yaml, parse_recipe

KEYS = [
    "model",
    "data",
    "seed",
    "max_accuracy_drop",
    "stages",
    "name",
    "measure",
    "zoo",
    "path",
    "dataset",
    "method",
    "bits",
    "sparsity",
    "epochs",
    "lr",
    "targets",
    "ignore",
    "kind",
    "final_sparsity",
    "steps",
    "formats",
    "ratio",
    "rank",
    "observer",
    "temperature",
    "bogus",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "lenet5",
            "mnist5k",
            "digits",
            "kmeans",
            "magnitude",
            "gradual",
            "re:(",
            "re:.*",
            "slim",
            "onnx",
            "agp",
            "svd",
            "-1",
            "1e9",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    ),
    max_leaves=12,
)
stage = st.one_of(
    st.dictionaries(st.sampled_from(list(STAGE_KINDS) + ["bogus"]), values, min_size=1, max_size=2),
    values,
)
recipes = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.one_of(st.just({"zoo": "lenet5"}), values),
            "data": st.one_of(st.just({"dataset": "digits"}), values),
            "stages": st.lists(stage, max_size=4),
        },
        optional={"seed": values, "max_accuracy_drop": values, "bogus": values},
    ),
    values,
)

CASES = {"recipes": 0, "yaml": 0, "configs": 0}


def _expect_slimkit_error(fn, *args) -> None:
    try:
        fn(*args)
    except SlimkitError as exc:
        assert str(exc).strip(), "slimkit errors carry a message"


def _parse_and_validate(raw):
    recipe = parse_recipe(raw)
    recipe.validate_stages()


@settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipes)
def test_malformed_recipes_raise_slimkit_errors(raw):
    CASES["recipes"] += 1
    _expect_slimkit_error(_parse_and_validate, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.text(max_size=200),
        recipes.map(lambda r: yaml.safe_dump(r, allow_unicode=True)),
        st.sampled_from(
            [
                "!!python/object/apply:os.system ['echo pwned']",
                "model: !!python/name:os.system\n",
                "a: [1, 2",
                "- - -\n  :",
                "\t",
            ]
        ),
    )
)
def test_malformed_yaml_text_raises_slimkit_errors(text):
    CASES["yaml"] += 1
    _expect_slimkit_error(from_yaml, text)


FAMILIES = [
    "slimkit.quantization.methods",
    "slimkit.pruning.methods",
    "slimkit.decomposition.methods",
]


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_config_validators_raise_slimkit_errors(family, data):
    methods = importlib.import_module(family).METHODS
    name = data.draw(st.sampled_from(sorted(methods)))
    options = data.draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
    CASES["configs"] += 1
    _expect_slimkit_error(methods[name].from_dict, options)


def test_zz_report_fuzz_counts():
    total = sum(CASES.values())
    print(
        f"\nfuzz cases: {CASES} = {total} malformed inputs, all ended in SlimkitError or were valid"
    )
    assert total >= 1000
