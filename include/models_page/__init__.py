"""The models page of the Airflow UI (plugins/planner_models_page.py): what the lifecycle recorded about
every version of the registered model, as JSON documents (`collect`) and one HTML page (`render`).
Plain functions: `collect` needs an MLflow client and a libpq DSN, `render` only the documents;
`app` wires them into the FastAPI app the plugin mounts."""
