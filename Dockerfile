# The Airflow image of the docker-compose stack: the official Airflow image plus requirements.txt, with
# this project's package (include/) importable and the DAGs baked in. TensorFlow is not here: models are
# trained, loaded and scored only in the trainer image (trainer/Dockerfile).
#
#   docker compose build        (or: docker build -t abalone-airflow .)
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
# The versions the tests ran with; apache-airflow is pinned to the base image's so pip never moves it.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/abalone/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/abalone/requirements.txt -c /opt/abalone/constraints.txt

COPY --chown=airflow:0 include /opt/abalone/include
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
# abalone_pipeline imports from here; its bundled data is /opt/abalone/include/data/abalone.data.
ENV PYTHONPATH=/opt/abalone/include
