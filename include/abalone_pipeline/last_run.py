"""``python -m abalone_pipeline.last_run``: what the last run decided and where to look (printed by make run)."""

from __future__ import annotations

import sys

from abalone_contract.tracking import mlflow_client
from abalone_pipeline.config import Settings
from abalone_pipeline.links import run_link
from abalone_pipeline.registry import (
    TAG_DECISION,
    TAG_DRY_RUN,
    TAG_OUTCOME,
    TAG_REASONS,
    current_version,
)


def main() -> int:
    settings = Settings.from_env()
    client = mlflow_client(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = (
        client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if experiment
        else []
    )
    if not runs:
        print(f"No MLflow run in experiment {settings.experiment!r} at {settings.tracking_uri}")
        return 1
    run = runs[0]
    tags, metrics = run.data.tags, run.data.metrics
    print(
        f"Last candidate:  run {run.info.run_id} ({run.info.status}), "
        f"test_rmse {metrics.get('test_rmse', float('nan')):.4f}"
    )
    outcome = tags.get(TAG_OUTCOME) or tags.get(TAG_DECISION)
    if outcome == "dry_run":
        outcome = f"dry run (the gate says {tags.get(TAG_DRY_RUN)}; the registry was not touched)"
    print(f"Gate decision:   {outcome or 'not recorded (the run stopped before the gate)'}")
    if TAG_REASONS in tags:
        print(f"Reasons:         {tags[TAG_REASONS]}")
    champion = current_version(client, settings.model_name, settings.champion_alias)
    if champion is None:
        print(f"Champion:        none: {settings.model_name}@{settings.champion_alias} is not set")
    else:
        version = client.get_model_version(settings.model_name, champion)
        print(
            f"Champion:        {settings.model_name} v{champion} "
            f"(models:/{settings.model_name}@{settings.champion_alias}, run {version.run_id})"
        )
    print(f"MLflow run:      {run_link(settings, run.info.run_id, run.info.experiment_id)}")
    if settings.mlflow_ui_url:
        print(f"Registry:        {settings.mlflow_ui_url}/#/models/{settings.model_name}")
    print(f"Staged data:     {tags.get('abalone.manifest_uri', settings.object_store_uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
