"""Errors are values with a code, a message and a status; `register` turns them into JSON responses.

Every error a client can cause ends here, including Werkzeug's own (404, 405, 413) and anything
unexpected, so no response is ever an HTML page or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class NotFound(ApiError):
    status, code = 404, "not_found"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class UndecodableImage(ApiError):
    status, code = 422, "undecodable_image"


class NotReady(ApiError):
    status, code = 503, "not_ready"


# Werkzeug's exceptions, by status, under our codes.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


def error_body(code: str, message: str, status: int) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


def message_body(code: str, message: str, status: int) -> dict:
    """The standard protocols' error body (Open Inference Protocol, TF Serving): the message."""
    return {"error": message}


# Error bodies by path prefix: each standard protocol answers its own shape, with our statuses.
BodyFormat = Callable[[str, str, int], dict]


def _body_for(formats: dict[str, BodyFormat]) -> Callable[[str, str, int], dict]:
    if not formats:
        return error_body

    def body(code: str, message: str, status: int) -> dict:
        path = request.path if has_request_context() else ""
        for prefix, fmt in formats.items():
            if path == prefix or path.startswith(prefix + "/"):
                return fmt(code, message, status)
        return error_body(code, message, status)

    return body


def _body_errors() -> tuple[type[Exception], ...]:
    """Gunicorn's errors for a malformed request body (bad chunk size, missing terminator, body
    cut short). They are raised inside the app, while it reads the body, so they reach our
    handlers rather than Gunicorn's: without this they would be answered 500."""
    try:
        from gunicorn.http.errors import NoMoreData, ParseException
    except ImportError:  # not running under Gunicorn
        return ()
    return (ParseException, NoMoreData)


def register(app: Flask, formats: dict[str, BodyFormat] | None = None) -> None:
    """Every error becomes a JSON response; under a prefix of `formats` ("/v2": ...), in that
    protocol's body."""
    error_body = _body_for(formats or {})

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error_body(exc.code, exc.message, exc.status)), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        response = jsonify(error_body(code, exc.description or exc.name, status))
        for header in ("Allow", "Retry-After"):
            if exc.get_response().headers.get(header):
                response.headers[header] = exc.get_response().headers[header]
        return response, status

    def _malformed_body(exc: Exception):
        message = f"malformed request body: {exc or type(exc).__name__}"
        return jsonify(error_body("bad_request", message, 400)), 400

    for cls in _body_errors():
        app.register_error_handler(cls, _malformed_body)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify(error_body("internal", "internal server error", 500)), 500
