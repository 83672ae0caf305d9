"""The registered model: dataset rows in, one keep probability per proposed meal out.

    model = mlflow.pyfunc.load_model("models:/planner_acceptance@challenger")
    scores = model.predict(rows)   # rows: a DataFrame with at least `plan_id` and `input`

The row -> text step is `include.core.features`, the same code the trainer learned from. A
registered version carries a copy of this file, `features.py` and `names.py` as a package of
its own, `planner_serving_<digest of that code>` (MLflow `code_paths`), a two-line loader
(MLflow "models from code": no pickled objects) and the trained directory (weights, tokenizer,
the recipe catalogue). So it loads without this repository, and in a process that has imported
the project's (perhaps newer) `include` it still scores with the code it was registered with:
the two never share a module name.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import mlflow.pyfunc

SERVING_PACKAGE_PREFIX = "planner_serving_"

INPUT_COLUMNS = ("plan_id", "input")
OUTPUT_COLUMNS = ("plan_id", "meal_index", "day", "recipe_id", "recipe_known", "keep_probability")
DEFAULT_BATCH_SIZE = 256


def serving_module(name: str):
    """`features` or `names` as registered with this copy of the file: its siblings inside a version's
    package, the project's own when it runs from the repository (training, tests)."""
    package = __name__.rpartition(".")[0]
    if package.startswith(SERVING_PACKAGE_PREFIX):
        return importlib.import_module(f"{package}.{name}")
    return importlib.import_module(f"include.core.{name}")


class PlannerAcceptanceModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import pyarrow.parquet as pq
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        features, names = serving_module("features"), serving_module("names")
        self.features = features
        directory = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
        self.kept_label = int(self.model.config.label2id.get("kept", 1))
        self.recipes = features.recipe_index(pq.read_table(Path(directory) / names.MODEL_RECIPES_FILE).to_pylist())

    def texts(self, rows) -> tuple[dict, list[str], list[int], list[str]]:
        """(output columns but the score, one context text per row, the row of each meal, one text per meal),
        in row order then meal order. A row's context is shared by its meals: it is tokenized once."""
        f = self.features
        columns = {name: [] for name in OUTPUT_COLUMNS[:-1]}
        contexts, meal_rows, meals = [], [], []
        for position, (plan_id, row_input) in enumerate(zip(rows["plan_id"], rows["input"])):
            context, proposed = f.proposed_meals(row_input)
            contexts.append(f.context_text(context))
            for index, meal in enumerate(proposed):
                recipe_id = str(meal["recipe_id"]).lower()
                recipe = self.recipes.get(recipe_id)
                columns["plan_id"].append(plan_id)
                columns["meal_index"].append(index)
                columns["day"].append(meal.get("day"))
                columns["recipe_id"].append(recipe_id)
                columns["recipe_known"].append(recipe is not None)
                meal_rows.append(position)
                meals.append(f.meal_text(recipe or f.UNKNOWN_RECIPE, context))
        return columns, contexts, meal_rows, meals

    def _pair_template(self) -> tuple[list[int], list[int], list[int]] | None:
        """(prefix, middle, suffix) special ids around a pair, e.g. [CLS] A [SEP] B [SEP]; None if not that shape."""
        a = self.tokenizer("workflow", add_special_tokens=False)["input_ids"]
        b = self.tokenizer("cuisine", add_special_tokens=False)["input_ids"]
        pair = self.tokenizer("workflow", "cuisine")["input_ids"]
        for i in range(len(pair) - len(a) + 1):
            if pair[i:i + len(a)] == a:
                rest = pair[i + len(a):]
                for j in range(len(rest) - len(b) + 1):
                    if rest[j:j + len(b)] == b:
                        return pair[:i], rest[:j], rest[j + len(b):]
        return None

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids without special tokens; each distinct text is tokenized once (meal texts repeat across plans),
        on a private copy of the Rust tokenizer (the transformers wrapper leaves truncation state on its own)."""
        from tokenizers import Tokenizer

        backend = getattr(self, "_backend", None)
        if backend is None and getattr(self.tokenizer, "backend_tokenizer", None) is not None:
            backend = self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            backend.no_truncation()
            backend.no_padding()
        unique = list(dict.fromkeys(texts))
        if backend is not None:
            encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
            ids = [e.ids for e in encode_batch(unique, add_special_tokens=False)]
        else:
            ids = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        lookup = dict(zip(unique, ids))
        return [lookup[t] for t in texts]

    def encode(self, contexts: list[str], meal_rows: list[int], meals: list[str]) -> list[list[int]]:
        """Token ids of each (context, meal) pair, exactly as `tokenizer(context, meal, truncation="only_first")`
        gives them, with each context tokenized once per row instead of once per meal."""
        if not meals:
            return []
        limit = self.tokenizer.model_max_length
        template = getattr(self, "_template", False)
        if template is False:
            template = self._template = self._pair_template()
        if template is not None:
            prefix, middle, suffix = template
            specials = len(prefix) + len(middle) + len(suffix)
            context_ids = self._token_ids(contexts)
            meal_ids = self._token_ids(meals)
            out = []
            for row, meal in zip(meal_rows, meal_ids):
                context = context_ids[row]
                room = limit - specials - len(meal)
                out.append(prefix + (context if len(context) <= room else context[:max(room, 0)]) + middle + meal + suffix)
            sample = range(0, len(meals), max(1, len(meals) // 8))  # the shortcut must agree with the tokenizer
            check = self.tokenizer([contexts[meal_rows[i]] for i in sample], [meals[i] for i in sample],
                                   truncation="only_first", max_length=limit)["input_ids"]
            if check == [out[i] for i in sample]:
                return out
            self._template = None
        return self.tokenizer([contexts[r] for r in meal_rows], meals, truncation="only_first",
                              max_length=limit)["input_ids"]

    def score(self, input_ids: list[list[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
        """Keep probabilities, batched by similar length (less padding), returned in input order."""
        import numpy as np
        import torch

        pad_id = self.tokenizer.pad_token_id or 0
        lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(input_ids), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                width = int(lengths[index].max())
                ids = np.full((len(index), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(index), width), dtype=np.int64)
                for row, i in enumerate(index):
                    ids[row, :lengths[i]] = input_ids[i]
                    mask[row, :lengths[i]] = 1
                logits = self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
                out[index] = torch.softmax(logits, dim=-1)[:, self.kept_label].numpy()
        return out.tolist()

    def predict(self, context, model_input, params=None):
        import pandas as pd

        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks columns {missing}: it takes dataset rows "
                             f"(at least {', '.join(INPUT_COLUMNS)})")
        batch_size = int((params or {}).get("batch_size") or DEFAULT_BATCH_SIZE)
        columns, contexts, meal_rows, meals = self.texts(model_input)
        columns["keep_probability"] = self.score(self.encode(contexts, meal_rows, meals), batch_size)
        return pd.DataFrame(columns, columns=list(OUTPUT_COLUMNS))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", name) for name in INPUT_COLUMNS]),
        outputs=Schema([ColSpec("string", "plan_id"), ColSpec("long", "meal_index"), ColSpec("string", "day"),
                        ColSpec("string", "recipe_id"), ColSpec("boolean", "recipe_known"),
                        ColSpec("double", "keep_probability")]),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]))

