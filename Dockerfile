# The Airflow image of the docker-compose stack: the official Airflow image plus requirements.txt, with
# this project's package (include/) importable and the DAGs baked in. TensorFlow is not here: models are
# trained, loaded and scored only in the trainer image (trainer/Dockerfile).
#
#   docker compose build        (or: docker build -t abalone-airflow .)
#
# AIRFLOW_BASE_IMAGE: the official image by default; a mirror of it, or the stand-in built by
# `standins/build.sh airflow` where no registry is reachable. Its Airflow must be AIRFLOW_VERSION.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
# The versions the tests ran with; apache-airflow is pinned to the base image's so pip never moves it.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/abalone/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/abalone/requirements.txt -c /opt/abalone/constraints.txt \
    && pip check

COPY --chown=airflow:0 include /opt/abalone/include
# The contract the trainer image shares (markers, columns, result payloads): standard library only.
COPY --chown=airflow:0 trainer/src/abalone_contract /opt/abalone/include/abalone_contract
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
# abalone_pipeline imports from here; its bundled data is /opt/abalone/include/data/abalone.data.
ENV PYTHONPATH=/opt/abalone/include
