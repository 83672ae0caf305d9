"""One name, one place: every identifier another phase or a user's script relies on."""
from __future__ import annotations

REGISTERED_MODEL_NAME = "planner_acceptance"
CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"

DATASET_NAME = "planner"

EXPERIMENT_DATASET = "planner_dataset"
EXPERIMENT_TRAINING = "planner_training"
EXPERIMENT_OFFLINE_EVAL = "planner_offline_eval"
ONLINE_EVAL = "planner_online_eval"  # the canary's DAG and its MLflow experiment

DAG_DATASET = "planner_dataset"
DAG_TRAINING = "planner_training"
DAG_REGISTRATION = "planner_registration"
DAG_OFFLINE_EVAL = "planner_offline_eval"
DAG_PROMOTION = "planner_promotion"

EVENTS_CONN_ID = "events_db"

# Asset names are logical (not storage URIs) so that moving the storage root does not
# change the identity of the asset and break the schedule chain.
ASSET_DATASET = "planner.dataset"
ASSET_MODEL_ARTIFACTS = "planner.model_artifacts"
ASSET_REGISTERED_MODEL = "planner.registered_model"
ASSET_OFFLINE_EVAL = "planner.offline_eval"

SUCCESS_MARKER = "_SUCCESS"

# The offline evaluation's report in its MLflow run (what promotion gates on).
EVAL_REPORT_FILE = "evaluation_report.json"
EVAL_REPORT_MD_FILE = "evaluation_report.md"

# Training run ids: `planner_acceptance-vYYYYMMDD_HHMMSS` (docs/contracts.md, storage layout).
TRAINING_RUN_ID_FORMAT = REGISTERED_MODEL_NAME + "-v%Y%m%d_%H%M%S"
TRAINING_RUN_ID_PATTERN = rf"^{REGISTERED_MODEL_NAME}-v\d{{8}}_\d{{6}}$"

# Files of a published dataset version (docs/contracts.md, storage layout).
DATASET_TRAINING_FILE = "training.parquet"
DATASET_QUARANTINE_FILE = "quarantine.parquet"
DATASET_RECIPES_FILE = "recipes.parquet"
DATASET_SCHEMA_FILE = "schema.json"
DATASET_SUMMARY_FILE = "dataset_summary.md"
DATASET_VALIDATION_FILE = "validation.json"
DATASET_COUNTS_FILE = "counts.json"

# Files of a published model directory (docs/contracts.md, storage layout).
MODEL_MANIFEST_FILE = "training_manifest.json"
# The recipe catalogue the model was trained with: the served model turns rows into text with it.
MODEL_RECIPES_FILE = "recipes.parquet"
MODEL_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        MODEL_RECIPES_FILE)
