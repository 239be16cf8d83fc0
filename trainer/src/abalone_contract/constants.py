"""The names and numbers both sides spell the same: columns, splits, markers, exit codes, levels, tags."""

from __future__ import annotations

# The trainer's last stdout line is ``ABALONE_RESULT <json>`` on success, ``ABALONE_ERROR <message>`` on failure.
RESULT_MARKER = "ABALONE_RESULT"
ERROR_MARKER = "ABALONE_ERROR"
# Error messages that start with these are final: retrying the same container cannot help.
BAD_INPUT_PREFIX = "bad input:"
SUPERSEDED_PREFIX = "superseded:"

# Exit codes of ``abalone-trainer``; 143 is the container stopped with SIGTERM.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 3
EXIT_SUPERSEDED = 4
EXIT_TERMINATED = 128 + 15

# The staged CSV's columns, in order: the model's features, then the label.
FEATURES: tuple[str, ...] = (
    "Sex",
    "Length",
    "Diameter",
    "Height",
    "Whole_weight",
    "Shucked_weight",
    "Viscera_weight",
    "Shell_weight",
)
NUMERIC_FEATURES: tuple[str, ...] = FEATURES[1:]
LABEL = "Rings"
COLUMNS: tuple[str, ...] = (*FEATURES, LABEL)
SEXES: tuple[str, ...] = ("M", "F", "I")

# The splits a staging manifest names; the trainer fits on train, stops early on validation, scores on test.
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Confidence levels the evaluation's bootstrap reports; the gate policy picks one of them.
CONFIDENCE_LEVELS: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99)
# Metrics of a scored model on the test split (``test_`` + name), and per slice (the bare names).
SLICE_METRICS: tuple[str, ...] = ("rmse", "mae", "r2", "mse")
TEST_METRICS: tuple[str, ...] = tuple(f"test_{name}" for name in SLICE_METRICS)

# MLflow run tags the trainer sets and the Airflow side searches by.
TAG_IDEMPOTENCY_KEY = "abalone.idempotency_key"
TAG_ATTEMPT = "abalone.attempt"
TAG_DATASET_ID = "abalone.dataset_id"
TAG_MANIFEST_URI = "abalone.manifest_uri"
TAG_CODE_REVISION = "abalone.code_revision"
TAG_MODEL_URI = "abalone.model_uri"


def idempotency_key(dag_id: str, run_id: str) -> str:
    """One key per DAG run: a training task's retry or re-run finds the MLflow run its earlier try made."""
    return f"{dag_id}/{run_id}"


# The test slices the evaluation scores and the gate checks, unless ABALONE_EVAL_SLICES says otherwise.
EVAL_SLICES = "sex;rings:7,11"


def parse_slices(text: str) -> tuple[bool, tuple[int, ...]]:
    """``sex;rings:7,11`` -> (by Sex, upper edges of the Rings bands): Rings <= 7, 8-11 and >= 12.

    ``none`` scores no slices. Raises ValueError naming what is wrong.
    """
    by_sex, bands = False, ()
    for part in filter(None, (part.strip() for part in text.split(";"))):
        name, _, edges = part.partition(":")
        if name == "sex" and not edges:
            by_sex = True
        elif name == "rings" and edges:
            try:
                bands = tuple(int(edge) for edge in edges.split(","))
            except ValueError:
                raise ValueError(f"rings:{edges}: the band edges must be integers") from None
            if list(bands) != sorted(set(bands)):
                raise ValueError(f"rings:{edges}: the band edges must be increasing")
        elif name != "none":
            raise ValueError(f"unknown slice {part!r}; use sex, rings:EDGES or none")
    return by_sex, bands
