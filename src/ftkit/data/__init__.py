"""Chat data for fine-tuning: read, select, check every row, write JSON Lines the component accepts whole.

``ChatDatasetBuilder(source, ...).build()`` (or ``ChatDatasetBuilder.from_job(job).build()``) returns a
:class:`DatasetBuild`: the JSONL file of each split and a :class:`DatasetReport`. See docs/data.md.

This package imports pyarrow and numpy; ``import ftkit`` does not import it until it is used.
"""

from __future__ import annotations

from .builder import ChatDatasetBuilder, TokenCounter
from .reasons import Reason
from .report import DatasetBuild, DatasetReport, Distribution, RejectedRow, SplitReport
from .selection import SplitSelection, SplitSpec, rows_for_percent
from .sources import (
    ChatSource,
    DataSourceError,
    HubSource,
    JsonlSource,
    ParquetSource,
    RowsSource,
    open_source,
)
from .validate import RowRules, check_row

__all__ = [
    "ChatDatasetBuilder",
    "ChatSource",
    "DataSourceError",
    "DatasetBuild",
    "DatasetReport",
    "Distribution",
    "HubSource",
    "JsonlSource",
    "ParquetSource",
    "Reason",
    "RejectedRow",
    "RowRules",
    "RowsSource",
    "SplitReport",
    "SplitSelection",
    "SplitSpec",
    "TokenCounter",
    "check_row",
    "open_source",
    "rows_for_percent",
]
