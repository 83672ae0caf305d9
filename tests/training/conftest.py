"""The training DAG as Airflow parses it, shared by the DAG and the wheel tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from include.core import names

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def training_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "planner_training.py"))
    assert bag.import_errors == {}
    return bag.dags[names.DAG_TRAINING]


class StandInTaskInstance:
    """What train_databricks asks of its task instance while it renders and runs: the try number,
    resolve_inputs' XComs (one per key as well: a task returning a dict pushes both) and the XComs
    it pushes itself."""

    def __init__(self, try_number: int, inputs: dict):
        self.try_number = try_number
        self.inputs = inputs
        self.pushed: dict = {}
        self.stats_tags: dict = {}

    def xcom_pull(self, task_ids, key="return_value", **_):
        assert task_ids == "resolve_inputs", task_ids
        return self.inputs if key == "return_value" else self.inputs[key]

    def xcom_push(self, key, value) -> None:
        self.pushed[key] = value


@pytest.fixture()
def databricks_try(training_dag):
    """train_databricks as one Airflow try gets it: a fresh copy of the DAG's task with its templates
    rendered for that try; returns (task, context)."""
    import copy

    def render(try_number: int, inputs: dict, task_state_store=None):
        task = copy.deepcopy(training_dag.get_task("train_databricks"))
        context = {"ti": StandInTaskInstance(try_number, inputs), "task_state_store": task_state_store}
        task.render_template_fields(context)
        return task, context

    return render


@pytest.fixture(scope="session")
def tiny_examples(published_dataset):
    """(tokenizer, encoded training examples, encoded validation examples) of the published dataset's
    first 300 rows, as planner-train builds them: for tests that drive the training loop itself."""
    from include.core.features import recipe_index
    from include.training import cli, modeling
    from include.training.examples import split_example_columns

    table, recipes, *_ = cli.load_dataset(published_dataset, 7, 300)
    train, val = split_example_columns(table, recipe_index(recipes.to_pylist()), 0.2, 7)
    tokenizer = modeling.train_tokenizer(text for chunk in train.text_chunks() for texts in chunk for text in texts)
    return tokenizer, modeling.encode(tokenizer, train), modeling.encode(tokenizer, val)
