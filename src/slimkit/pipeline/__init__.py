"""Recipes and the compress runner: ``slimkit compress recipe.yaml --out DIR [--resume]``.

```python
from slimkit.pipeline import load_recipe, compress
result = compress(load_recipe("examples/lenet5_deep_compression.yaml"), "runs/demo")
```
"""

from slimkit.pipeline.recipe import Recipe, from_yaml, load_recipe, parse_recipe
from slimkit.pipeline.runner import RunResult, compress

__all__ = ["Recipe", "RunResult", "compress", "from_yaml", "load_recipe", "parse_recipe"]
