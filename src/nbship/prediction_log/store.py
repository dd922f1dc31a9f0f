# Temporary: the old import path, until every importer uses nbship.prediction_log.
from nbship.prediction_log import (
    COLUMNS,
    FEEDBACK_KIND,
    LOG_URL_ENV,
    REJECTED_FILE,
    RETRAIN_REQUEST_KIND,
    LogEntry,
    PredictionLog,
    RawJSON,
    count,
    export_log,
    new_request_id,
    purge,
    read_log,
    url_for_sqlite,
)

__all__ = [
    "COLUMNS",
    "FEEDBACK_KIND",
    "LOG_URL_ENV",
    "REJECTED_FILE",
    "RETRAIN_REQUEST_KIND",
    "LogEntry",
    "PredictionLog",
    "RawJSON",
    "count",
    "export_log",
    "new_request_id",
    "purge",
    "read_log",
    "url_for_sqlite",
]
