"""What the trainer image and the Airflow side must agree on, written once.

Standard library only, so both sides import it without the other's dependencies: the trainer's wheel
ships it (trainer/pyproject.toml finds it beside ``abalone_trainer``) and the Airflow image copies it
next to ``abalone_pipeline``. ``constants``: the names both sides spell (columns, splits, markers, exit
codes, confidence levels, MLflow tags); ``results``: the payloads the trainer prints and the pipeline
parses; ``tracking``: the MLflow lookups both sides make.
"""
