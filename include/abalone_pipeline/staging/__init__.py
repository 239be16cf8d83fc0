"""Staging: validate an abalone source, split it by row hash and write it under a content-addressed prefix.

The source is streamed, so a file far larger than memory is staged in bounded memory, one phase per module:

- ``sources``: where a source is read from (a path, ``file://``, ``s3://``, ``http(s)://``), streamed.
- ``scan``: the source in blocks of whole lines; each block checked (``validation.check_rows``), its bad
  rows quarantined, its valid rows keyed (``spec.row_keys``) and spooled; the source's SHA-256 and the
  drift statistics on the way.
- ``spool``: valid rows on local disk in partitions of the key space, read back one partition at a time.
- ``assemble``: partition by partition in key order, exact duplicates quarantined and the rest cut into
  the splits, each in a canonical order (ascending row key) that depends only on the rows.
- ``quarantine``: the quarantined rows, merged into one CSV in line order.
- ``publish``: create-only uploads, verified; the manifest last, as the commit marker.
- ``pipeline``: ``stage``, which runs them and derives the dataset id from the splits' and the
  quarantine's SHA-256 and the split spec.
- ``workers``: the scan's blocks and the assembly's partitions go to worker processes, results in order,
  so the dataset is the same for any number of workers.
"""

from __future__ import annotations

from abalone_contract.constants import SPLITS
from abalone_pipeline.staging.pipeline import stage
from abalone_pipeline.staging.spec import SplitSpec, StagedDataset, StagingError, row_keys, split_of
from abalone_pipeline.validation import COLUMNS

__all__ = ["COLUMNS", "SPLITS", "SplitSpec", "StagedDataset", "StagingError", "row_keys", "split_of", "stage"]
