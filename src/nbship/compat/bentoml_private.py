"""The private parts of BentoML the service relies on, each behind one named function.

BentoML 1.4 documents a "root input" (an API whose one positional-only parameter takes
the whole request body) but builds its model itself, with stock pydantic validation: a
malformed body is a bare `json.JSONDecodeError` (a 500) and every error location carries
the wrapper's field. The service needs its own model of that kind, so it subclasses the
one BentoML uses. BentoML also logs every rejected request as an ERROR with a traceback,
through a logger whose name is its private module's.

Checked against bentoml 1.4.39 by `tests/unit/test_compat_bentoml.py`, which fails,
naming the installed version, when any of what is relied on here changes.
"""

import logging
from typing import Any

import bentoml

CHECKED_VERSION = "1.4.39"
# the one field of BentoML's root model: the first part of each validation error's `loc`
ROOT_FIELD = "root"
# the logger of `bentoml._internal.server.http_app.log_exception`
REQUEST_ERROR_LOGGER = "bentoml._internal.server.http_app"


def root_input_base(root: Any) -> type[bentoml.IODescriptor]:
    """A base class for an API's input spec whose whole request body is one value of type
    `root` (the model BentoML builds for a positional-only parameter), to subclass for
    custom validation; the API method takes the validated value as its one positional
    argument.

    Relies on (bentoml 1.4.39): `_bentoml_sdk.io_models.IORootModel`, a generic subclass of
    the public `bentoml.IODescriptor` with one field, `root` (ROOT_FIELD); its
    `model_validate(obj)` validating `{"root": obj}` (so error locations start with
    "root") and its `model_validate_json` being what the JSON serde calls with the raw
    body; the class flag `__root_input__`, under which the HTTP app calls the API with
    an IORootModel instance's `.root` as its one positional argument; and the OpenAPI
    document showing an IORootModel's root type components (e.g. `Record`), not the
    wrapper itself.
    """
    from _bentoml_sdk.io_models import IORootModel

    class RootInput(IORootModel[root]):
        __root_input__ = True

    return RootInput


def request_error_logger() -> logging.Logger:
    """The logger through which BentoML's HTTP app reports each request it rejects (a
    pydantic ValidationError from an input spec answers 400 and is logged here).

    Relies on (bentoml 1.4.39): `_bentoml_impl.server.app.ServiceAppFactory.
    api_endpoint_wrapper` calling `bentoml._internal.server.http_app.log_exception(request)`
    on a ValidationError, which logs `logger.error("Exception on %s [%s]", path, method,
    exc_info=True)` on that module's logger (`logging.getLogger(__name__)`): the record's
    first argument is the request path and its exc_info holds the ValidationError.
    """
    return logging.getLogger(REQUEST_ERROR_LOGGER)
