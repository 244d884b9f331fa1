"""The compression recipe: a pydantic schema (unknown keys rejected) read with ``yaml.safe_load``.

```yaml
model: {zoo: lenet5}                 # or {path: model.safetensors}
data: {dataset: mnist5k}             # null: no data (stages that need data are refused)
seed: 0                              # every stage's training, nested ones too (unless set there)
max_accuracy_drop: 0.5               # percentage points vs the reference (last train stage)
stages:
  - train: {epochs: 8}
  - prune: {method: gradual, final_sparsity: 0.95, steps: 4, finetune: {epochs: 1}}
  - quantize: {method: kmeans, bits: 4}
  - export: {formats: [slim, onnx]}
```

Each stage is a one-key mapping ``{kind: options}``; the options are the same config the Python
API takes and are validated by building it (:func:`slimkit.pipeline.stages.build_stage`), so a
typo fails before anything runs, naming the stage index, the key, the value and the choices.
``Recipe -> YAML -> Recipe`` round-trips exactly (:meth:`Recipe.to_yaml`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slimkit.errors import ConfigError

STAGE_KINDS = (
    "train",
    "prune",
    "quantize",
    "distill",
    "decompose",
    "finetune",
    "export",
    "benchmark",
    "hf_compress",  # a Hugging Face encoder (model: {hf: ...}); see slimkit.pipeline.hf_stage
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    """Where the model comes from: a zoo name (+ its kwargs), a slimkit model file, or a
    Hugging Face encoder folder (``hf: null`` = the bundled all-MiniLM-L6-v2; "" = not HF)."""

    zoo: str | None = None
    path: str | None = None
    hf: str | None = ""
    image_size: int | None = Field(None, ge=1)  # default: from the dataset (28 mnist5k, 8 digits)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataSection(_Strict):
    dataset: str = "mnist5k"
    batch_size: int = Field(64, ge=1)
    train_samples: int | None = Field(None, ge=1)
    test_samples: int | None = Field(None, ge=1)
    calib_samples: int = Field(256, ge=1)


class MeasureSection(_Strict):
    """How each stage is measured (ORT latency: median of ``latency_runs`` after warm-up)."""

    latency_runs: int = Field(20, ge=1)
    threads: int = Field(2, ge=1, le=256)
    onnx: bool = True  # export each stage to ONNX and time it in ONNX Runtime


class Recipe(_Strict):
    name: str = "slimkit-run"
    model: ModelSection
    data: DataSection | None = Field(default_factory=lambda: DataSection.model_validate({}))
    seed: int = Field(0, ge=0)
    max_accuracy_drop: float | None = Field(None, ge=0, le=100)  # percentage points
    measure: MeasureSection = Field(default_factory=lambda: MeasureSection.model_validate({}))
    stages: list[dict[str, dict[str, Any]]]

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_shape(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError(
                f"stages must be a non-empty list of {{kind: options}}, but got {value!r}"
            )
        out = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):  # "- train" with no options
                entry = {entry: {}}
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(
                    f"stages[{i}] must be a one-key mapping like {{train: {{epochs: 5}}}}, "
                    f"but got {entry!r}"
                )
            ((kind, options),) = entry.items()
            if kind not in STAGE_KINDS:
                near = difflib.get_close_matches(str(kind), STAGE_KINDS, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(
                    f"stages[{i}] has unknown stage kind {kind!r}{hint}; valid kinds: {list(STAGE_KINDS)}"
                )
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise ValueError(
                    f"stages[{i}].{kind} options must be a mapping, but got {options!r}"
                )
            out.append({kind: options})
        return out

    # ---- conveniences ---------------------------------------------------------------------

    def stage_list(self) -> list[tuple[str, dict[str, Any]]]:
        return [next(iter(s.items())) for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        if d["model"].get("hf") == "":  # not an HF recipe: keep the dump (and digest) unchanged
            del d["model"]["hf"]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self, stages: int | None = None) -> str:
        """Stable hash of the recipe; with ``stages``, of everything but the stages from index
        ``stages`` on. Resume needs the same digest up to the last finished stage: a run that
        failed at stage 3 resumes after the user fixes stage 3, not after a change before it."""
        d = self.to_dict()
        if stages is not None:
            d["stages"] = d["stages"][:stages]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def validate_stages(self) -> list[Any]:
        """Build every stage's config now; returns them (ConfigError names the bad stage)."""
        from slimkit.pipeline.hf_stage import is_hf_recipe
        from slimkit.pipeline.stages import build_stage, check_stage_order

        hf = is_hf_recipe(self)
        if not hf:  # an HF recipe refuses these keys itself (refuse_unused_recipe_keys)
            check_model_section(self.model)
        plans = [
            build_stage(i, kind, opts, self) for i, (kind, opts) in enumerate(self.stage_list())
        ]
        check_stage_order(plans)
        if not hf:
            check_gate(self)
        return plans


def check_model_section(m: ModelSection) -> None:
    """Refuse model keys the runner would ignore or pass twice (they were silently dropped, or a
    Python TypeError from the zoo call)."""
    if (m.zoo is None) == (m.path is None):
        raise ConfigError(
            f"model must give exactly one of zoo or path, but got zoo={m.zoo!r}, path={m.path!r}"
        )
    if m.path is not None:
        key = "image_size" if m.image_size is not None else "kwargs" if m.kwargs else None
        if key is not None:
            raise ConfigError(
                f"model.{key} only applies to a zoo model, but the model is the file {m.path!r}, "
                f"which keeps the architecture it was saved with (got {key}="
                f"{getattr(m, key)!r}); remove model.{key}"
            )
    elif "image_size" in m.kwargs:
        raise ConfigError(
            f"model.kwargs.image_size duplicates model.image_size, but got "
            f"kwargs.image_size={m.kwargs['image_size']!r}; write it as model.image_size: "
            f"{m.kwargs['image_size']!r} instead"
        )


def check_gate(recipe: Recipe) -> None:
    """``max_accuracy_drop`` must compare two measured accuracies, the first of a trained model
    (a gate that cannot fail, or against chance accuracy, said PASS)."""
    limit = recipe.max_accuracy_drop
    if limit is None:
        return
    if recipe.data is None:
        raise ConfigError(
            f"max_accuracy_drop = {limit:g} needs accuracy measured on test data, but the recipe "
            "has data: null, so the gate could never fail; add data: {dataset: mnist5k} (or the "
            "model's dataset), or remove max_accuracy_drop"
        )
    if recipe.model.zoo is not None and "train" not in [k for k, _ in recipe.stage_list()]:
        raise ConfigError(
            f"max_accuracy_drop = {limit:g} compares against a trained reference, but "
            f"model: {{zoo: {recipe.model.zoo}}} builds an untrained model and no train stage "
            "trains it (its accuracy is chance); add a train stage first, start from a trained "
            "file (model: {path: trained.safetensors}), or remove max_accuracy_drop"
        )


def _format_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = _section_of(err["loc"])
            valid = sorted(section.model_fields) if section else []
            near = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            parts.append(f"unknown key {loc!r}{hint}; valid keys here: {valid}")
        elif err["type"] == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            where = f"{loc}: " if loc else ""
            got = "" if "but got" in msg else f", but got {err.get('input')!r}"
            parts.append(f"{where}{msg}{got}")
    return f"invalid recipe {source}: " + "; ".join(parts)


def _section_of(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    sections: dict[str, type[BaseModel]] = {
        "model": ModelSection,
        "data": DataSection,
        "measure": MeasureSection,
    }
    if len(loc) == 1:
        return Recipe
    return sections.get(str(loc[0]))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML), e.g. ``stages.0.train.epochs=1``."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY.PATH=VALUE, but got {item!r}")
        path, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {path}: {text!r} is not a YAML value ({exc})") from None
        keys = path.split(".")
        node: Any = raw
        for k in keys[:-1]:
            if not isinstance(node, dict | list):  # e.g. seed.x=1 where seed is a number
                raise ConfigError(f"--set {path}: {k!r} is below the value {node!r}, not a mapping")
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(
                        f"--set {path}: {k!r} is not an index of a {len(node)}-item list"
                    )
                node = node[int(k)]
            else:
                if node.get(k) is None:
                    node[k] = {}
                node = node[k]
        last = keys[-1]
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {path}: {last!r} is below the value {node!r}, not a mapping")
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(
                    f"--set {path}: {last!r} is not an index of a {len(node)}-item list"
                )
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def parse_recipe(raw: Any, source: str = "<dict>", overrides: list[str] | None = None) -> Recipe:
    """Validate a recipe mapping (and every stage's config); ConfigError on any problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"recipe {source} must be a mapping at the top level, but got {type(raw).__name__}"
        )
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    recipe.validate_stages()
    return recipe


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe with ``yaml.safe_load`` and validate it."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigError(f"recipe file {str(p)!r} {what}; pass the path of a YAML recipe")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"recipe {p} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {p} is not valid YAML: {exc}") from None
    return parse_recipe(raw, str(p), overrides)


def from_yaml(text: str) -> Recipe:
    if not isinstance(text, str):
        raise ConfigError(
            f"from_yaml takes the recipe's YAML text, but got {type(text).__name__}; for a file "
            "use load_recipe(path)"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe is not valid YAML: {exc}") from None
    return parse_recipe(raw, "<yaml>")
