"""What the model server and the studio share over HTTP, without the model: the JSON error shape and its
handlers, the upload limit, and the API docs served from this machine. Importing it loads no PyTorch (the
studio answers its first page before any model is loaded)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ErrorResponse(BaseModel):
    error: str
    file: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        400: "no image in the request",
        413: "the request is larger than the upload limit, or has too many images",
        422: "a file that is not a usable image (unreadable, truncated, over the pixel limit)",
    }.items()
}


class RequestProblem(HTTPException):
    """A bad request, answered as ``{"error": ..., "file": ...}`` with its status."""

    def __init__(self, status: int, error: str, file: str | None = None) -> None:
        super().__init__(status, error)
        self.file = file


class BodyLimit:
    """Refuses a request body over ``max_bytes``: at once from its Content-Length, else while it streams
    in, before the multipart parser spools it to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def problem(self) -> RequestProblem:
        return RequestProblem(413, f"upload larger than the limit of {self.max_bytes:,} bytes; send smaller images")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            problem = self.problem() if declared.isdigit() else RequestProblem(400, "invalid Content-Length header")
            await JSONResponse({"error": problem.detail}, problem.status_code)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.problem()  # inside the route: FastAPI re-raises it, its handler answers 413
            return message

        await self.app(scope, counted, send)


DOCS_ASSETS = "/docs-assets"


def offline_docs(app: FastAPI) -> None:
    """The API docs at /docs (Swagger UI) and /redoc from files on this machine (the fastapi-offline package
    carries them), not from a CDN: the pages work offline, as the server does."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = resources.files("fastapi_offline").joinpath("static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def answer_errors_as_json(app: FastAPI) -> None:
    """Every refused request answered ``{"error": ..., "file": ...}`` with its status, a validation error as one
    line naming the field."""

    @app.exception_handler(HTTPException)
    async def problem_answer(_: Request, exc: HTTPException) -> JSONResponse:
        # the headers Starlette sets go along: `Allow` on a 405 lists the methods the path takes
        body = {"error": exc.detail, "file": getattr(exc, "file", None)}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ())]
        where = ".".join(part for part in loc if part != "body")
        # the route's own field: files on /predict, file on /explain
        field = loc[1] if len(loc) > 1 and loc[0] == "body" else None
        hint = f"; send images as multipart form data: {field}=@IMAGE" if field in ("file", "files") else ""
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}{hint}", "file": None}, 422)
