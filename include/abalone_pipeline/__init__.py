"""Airflow-side logic of the abalone retraining pipeline: staging, the gate, the registry. No TensorFlow."""
