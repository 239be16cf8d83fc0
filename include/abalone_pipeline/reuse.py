"""Whether tonight's training can only reproduce the champion: then the night skips it.

The same staged dataset (its content id), the same trainer image (its content id, not its tag) and the
same hyperparameters (as the trainer logs them) give the same model on the trainer's deterministic CPU
path, so it could only tie the champion and be rejected. Every comparison is of exact ids recorded on the
champion's version and run; a missing record is a difference. ``force_training``, a forced promotion
(it needs a candidate) and a dry run (it is asked for the gate's verdict) train anyway, and so does a DAG
run that already trained (a cleared or re-run night: the trainer finds its MLflow run and reuses it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

from abalone_contract.constants import TAG_DATASET_ID
from abalone_contract.hyperparams import HyperParams
from abalone_pipeline.config import Settings
from abalone_pipeline.registry import TAG_TRAINER_IMAGE_ID

log = logging.getLogger(__name__)


def differences(
    champion_tags: dict[str, str],
    champion_params: dict[str, str],
    *,
    dataset_id: str,
    image_id: str,
    hyperparams: dict[str, str],
) -> list[str]:
    """What tonight's training would change from the champion's, each as "what: champion's -> tonight's"."""
    found = []
    for what, theirs, ours in (
        ("dataset", champion_tags.get(TAG_DATASET_ID), dataset_id),
        ("trainer image", champion_tags.get(TAG_TRAINER_IMAGE_ID), image_id),
        *((name, champion_params.get(name), value) for name, value in hyperparams.items()),
    ):
        if theirs != ours:
            found.append(f"{what}: {theirs or 'not recorded'} -> {ours}")
    return found


def requested_hyperparams(inputs: dict[str, Any]) -> dict[str, str]:
    """The hyperparameters the trainer will log for this run (the Params over the trainer's defaults)."""
    given = inputs["hyperparams"]
    return HyperParams(
        epochs=int(given["epochs"]), batch_size=int(given["batch_size"]), learning_rate=float(given["learning_rate"])
    ).as_params()


def unchanged_since_champion(settings: Settings, inputs: dict[str, Any], image: dict[str, Any]) -> str | None:
    """Why training would only reproduce the champion, or None (train): the train task's ``skip_check``.

    ``inputs``: the staged ``dataset_id``, the run's ``options`` (``preflight``'s), its ``idempotency_key`` and
    the ``hyperparams`` Params; ``image``: the trainer image as the Docker engine has it
    (``TrainerContainerOperator.image_provenance``).
    Anything it cannot read (MLflow down, no champion, an image without an id) means: train.
    """
    from abalone_contract.tracking import alias_version, mlflow_client

    options = inputs["options"]
    forced = [name for name in ("force_training", "force_reason", "dry_run") if options.get(name)]
    if forced:
        log.info("training: asked for by %s", forced[0].replace("force_reason", "force_promote"))
        return None
    if not image.get("id"):
        log.info("training: the trainer image %s has no content id to compare", image.get("name"))
        return None
    hyperparams = requested_hyperparams(inputs)
    try:
        with _brief_mlflow_retries():
            client = mlflow_client(settings.tracking_uri)
            champion = alias_version(client, settings.model_name, settings.champion_alias)
            if champion is None:
                log.info("training: %s has no %s yet", settings.model_name, settings.champion_alias)
                return None
            params = client.get_run(champion.run_id).data.params
            changed = differences(
                champion.tags or {},
                params,
                dataset_id=inputs["dataset_id"],
                image_id=image["id"],
                hyperparams=hyperparams,
            )
            if changed:
                log.info("training: changed since the champion v%s: %s", champion.version, "; ".join(changed))
                return None
            if already_trained(client, settings.experiment, inputs["idempotency_key"]):
                log.info("training: this DAG run already trained (its MLflow run is reused)")
                return None
    except Exception as exc:  # only a shortcut: when in doubt, train
        log.warning("training: cannot read the champion to compare with (%s)", exc)
        return None
    return (
        f"unchanged since the champion v{champion.version} (run {champion.run_id}): the same dataset "
        f"{inputs['dataset_id']}, trainer image {image['id'][:19]} and hyperparameters "
        f"(epochs {hyperparams['epochs']}, batch size {hyperparams['batch_size']}, learning rate "
        f"{hyperparams['learning_rate']}); a new model could only tie it. Trigger with force_training to train anyway"
    )


def already_trained(client, experiment: str, key: str) -> bool:
    """Whether an MLflow run of this DAG run's training (its idempotency key) exists."""
    from abalone_contract.constants import TAG_IDEMPOTENCY_KEY

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return False
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{key}'", max_results=1
    )
    return bool(runs)


@contextmanager
def _brief_mlflow_retries() -> Generator[None]:
    """MLflow's own retries take minutes against a server that is down; this check gives up in seconds
    (training then meets the outage itself, with the trainer's retries). The worker's settings come back after.
    """
    brief = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": 1, "MLFLOW_HTTP_REQUEST_TIMEOUT": 10}
    before = {name: os.environ.get(name) for name in brief}
    for name, limit in brief.items():  # a stricter setting of the worker's stays
        try:
            value = min(int(before[name]), limit) if before[name] is not None else limit
        except ValueError:
            value = limit
        os.environ[name] = str(value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
