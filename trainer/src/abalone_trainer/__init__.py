"""Train and score the abalone age model; a CLI program run inside the TensorFlow DLC, never Airflow code."""
