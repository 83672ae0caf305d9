# The compose stack's MLflow tracking server: MLflow's image (the version requirements.txt pins)
# plus its basic-auth extra and the drivers of its stores, installed at build time, so the
# server starts without reaching a package index.
#   docker compose -f docker-compose.airflow.yml build mlflow
FROM ghcr.io/mlflow/mlflow:v3.17.2

ENV MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    PIP_NO_CACHE_DIR=1

RUN pip install "mlflow[auth]==3.17.2" Flask-WTF==1.3.0 psycopg2-binary==2.9.13 boto3==1.43.117
