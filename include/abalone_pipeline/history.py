"""``python -m abalone_pipeline.history`` (``make history``): every promotion and rollback of the model.

Reads the audit tags that ``registry`` writes; MLflow itself keeps no history of alias moves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from abalone_contract.tracking import mlflow_client
from abalone_pipeline.config import Settings
from abalone_pipeline.registry import current_version, history

COLUMNS = ("when", "event", "version", "replaced", "airflow_run", "mlflow_run", "dataset", "by", "why")


def format_table(events: list[dict], width: int = 60) -> str:
    rows = [[str(event.get(column) or "-")[:width] for column in COLUMNS] for event in events]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(COLUMNS)]
    lines = ["  ".join(column.upper().ljust(w) for column, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="abalone-history", description=__doc__.splitlines()[0])
    parser.add_argument("--model-name", default=settings.model_name)
    parser.add_argument("--limit", type=int, default=100, help="newest versions to read (default 100)")
    parser.add_argument("--width", type=int, default=60, help="truncate each cell to this many characters")
    args = parser.parse_args(argv)
    client = mlflow_client(settings.tracking_uri)
    events = history(client, args.model_name, limit=args.limit)
    if not events:
        print(f"No promotion of {args.model_name} recorded at {settings.tracking_uri}")
        return 1
    print(format_table(events, args.width))
    champion = current_version(client, args.model_name, settings.champion_alias)
    previous = current_version(client, args.model_name, settings.previous_alias)
    print(
        f"\n{args.model_name}@{settings.champion_alias} = {f'v{champion}' if champion else 'unset'}; "
        f"@{settings.previous_alias} = {f'v{previous}' if previous else 'unset'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
