"""The registered model: dataset rows in, one keep probability per proposed meal out.

    model = mlflow.pyfunc.load_model("models:/planner_acceptance@challenger")
    scores = model.predict(rows)   # rows: a DataFrame with at least `plan_id` and `input`

The row -> text step is `include.core.features`, the same code the trainer learned from; the
registered model carries that file (MLflow `code_paths`), this file (MLflow "models from
code": no pickled objects) and the trained directory (weights, tokenizer, the recipe
catalogue), so it loads without this repository.
"""
from __future__ import annotations

import sys
from pathlib import Path

import mlflow.models
import mlflow.pyfunc

MODEL_CODE = Path(__file__)

INPUT_COLUMNS = ("plan_id", "input")
OUTPUT_COLUMNS = ("plan_id", "meal_index", "day", "recipe_id", "recipe_known", "keep_probability")
DEFAULT_BATCH_SIZE = 256


def _forget_code_dir(model_artifact: Path) -> None:
    """Take the model's `code` dir off sys.path once its module is imported: MLflow leaves it at
    the front, where it would shadow this project's `include` package in any child process."""
    code_dir = model_artifact.resolve().parents[1] / "code"
    sys.path[:] = [entry for entry in sys.path if not entry or Path(entry).resolve() != code_dir]


class PlannerAcceptanceModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import pyarrow.parquet as pq
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from include.core import features, names  # resolved now, while MLflow has the model's code dir on sys.path

        self.features = features
        directory = context.artifacts["model"]
        _forget_code_dir(Path(directory))
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True).eval()
        self.kept_label = int(self.model.config.label2id.get("kept", 1))
        self.recipes = features.recipe_index(pq.read_table(Path(directory) / names.MODEL_RECIPES_FILE).to_pylist())

    def texts(self, rows) -> tuple[list[dict], list[str], list[str]]:
        """(one record per proposed meal, context texts, meal texts), in row order then meal order."""
        f = self.features
        records, contexts, meals = [], [], []
        for plan_id, row_input in zip(rows["plan_id"], rows["input"]):
            context, proposed = f.proposed_meals(row_input)
            ctx = f.context_text(context)
            for index, meal in enumerate(proposed):
                recipe_id = str(meal["recipe_id"]).lower()
                recipe = self.recipes.get(recipe_id)
                records.append({"plan_id": plan_id, "meal_index": index, "day": meal.get("day"),
                                "recipe_id": recipe_id, "recipe_known": recipe is not None})
                contexts.append(ctx)
                meals.append(f.meal_text(recipe or f.UNKNOWN_RECIPE, context))
        return records, contexts, meals

    def encode(self, contexts: list[str], meals: list[str]) -> list[list[int]]:
        return self.tokenizer(contexts, meals, truncation="only_first",
                              max_length=self.tokenizer.model_max_length)["input_ids"]

    def score(self, input_ids: list[list[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
        """Keep probabilities, batched by similar length (less padding), returned in input order."""
        import torch

        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        out = [0.0] * len(input_ids)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [input_ids[i] for i in index]}, return_tensors="pt")
                logits = self.model(**batch).logits
                for i, p in zip(index, torch.softmax(logits, dim=-1)[:, self.kept_label].tolist()):
                    out[i] = p
        return out

    def predict(self, context, model_input, params=None):
        import pandas as pd

        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks columns {missing}: it takes dataset rows "
                             f"(at least {', '.join(INPUT_COLUMNS)})")
        batch_size = int((params or {}).get("batch_size") or DEFAULT_BATCH_SIZE)
        records, contexts, meals = self.texts(model_input)
        frame = pd.DataFrame.from_records(records, columns=list(OUTPUT_COLUMNS[:-1]))
        frame["keep_probability"] = self.score(self.encode(contexts, meals), batch_size) if records else []
        return frame


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", name) for name in INPUT_COLUMNS]),
        outputs=Schema([ColSpec("string", "plan_id"), ColSpec("long", "meal_index"), ColSpec("string", "day"),
                        ColSpec("string", "recipe_id"), ColSpec("boolean", "recipe_known"),
                        ColSpec("double", "keep_probability")]),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]))


mlflow.models.set_model(PlannerAcceptanceModel())
