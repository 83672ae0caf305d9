# The Airflow image of the compose stack: Airflow's official image plus this project's pinned
# requirements (CPU torch; training itself runs in its own GPU image, include/training/Dockerfile).
#   docker compose -f docker-compose.airflow.yml build
FROM apache/airflow:3.3.2-python3.11

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PIP_NO_CACHE_DIR=1

COPY requirements.txt /tmp/requirements.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -r /tmp/requirements.txt
