"""Serve a model over HTTP: a JSON API and a web page that shows what the model sees in a photo.

    GET  /          the web page (drop a photo, see scores, category, attributes, landmarks)
    GET  /health    {"status": "ok", "model": {...}}
    GET  /labels    the label vocabulary (and categories / landmark names for clothing models)
    POST /predict   multipart/form-data with the photo in the field ``file``; optional ?top_k=
    GET  /docs      OpenAPI documentation (FastAPI's)

Uploads are read as a stream and cut off as soon as they pass ``max_upload_mb`` (413), whatever
Content-Length claims. The uploaded file name is only echoed back, never used as a path.
Inference runs in a worker thread, so one slow image never blocks the event loop.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any, AsyncGenerator

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from fashionlens.errors import DataError
from fashionlens.inference import Predictor, load, read_image_bytes, to_uint8_chw

logger = logging.getLogger("fashionlens.server")

# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
ACCEPTED_TYPES = ("image/", "application/octet-stream")


class _UploadTooLarge(Exception):
    pass


def _safe_filename(name: str | None) -> str:
    """The last path component, printable characters only: echoed back, never opened."""
    if not name:
        return "upload"
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[^\w.\- ()]", "_", base).strip(" .")
    return base[:120] or "upload"


def _static_text(name: str) -> str:
    return resources.files("fashionlens.server").joinpath("static", name).read_text(encoding="utf-8")


def create_app(model: str | Path | Predictor, max_upload_mb: float = 10.0, runtime: str = "torch") -> FastAPI:
    """The FastAPI application for a model directory (loaded with ``runtime``) or a ready Predictor."""
    predictor = model if isinstance(model, Predictor) else load(model, runtime=runtime)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    limit_text = f"{max_upload_mb:g} MB"

    app = FastAPI(title="fashionlens", version=_version(),
                  description="Fashion image recognition: styles, or category, attributes and landmarks. "
                              "POST a photo to /predict as multipart/form-data (field `file`).")
    app.state.predictor = predictor
    app.state.max_upload_bytes = max_bytes

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    @app.get("/health", summary="Liveness and model information")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.info(), "max_upload_mb": max_upload_mb}

    @app.get("/labels", summary="The model's label vocabulary")
    def labels() -> dict[str, Any]:
        return predictor.labels_info()

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": f"a photo (JPEG, PNG, WebP, ...), at most {limit_text}"}}}}}}}

    @app.post("/predict", summary="Predict one photo", openapi_extra=upload_schema,
              responses={400: {"description": "corrupt image or malformed upload"},
                         413: {"description": f"upload larger than {limit_text}"},
                         415: {"description": "not an image"}, 422: {"description": "no `file` field"}})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, le=1000, description="labels to return (per type)"),
                      threshold: float | None = Query(None, ge=0.0, le=1.0, description="minimum probability"),
                      ) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return error(415, "send the photo as multipart/form-data in a field named 'file' "
                              f"(got Content-Type {content_type or 'none'!r})")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return error(400, f"invalid Content-Length header {declared!r}")
            if int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
                return error(413, f"upload too large ({int(declared) / 1024 / 1024:.1f} MB); the limit is {limit_text}")

        async def limited_stream() -> AsyncGenerator[bytes, None]:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes + MULTIPART_OVERHEAD_BYTES:
                    raise _UploadTooLarge()
                yield chunk

        parser = MultiPartParser(request.headers, limited_stream(), max_files=1, max_fields=8,
                                 max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except _UploadTooLarge:
            return error(413, f"upload too large; the limit is {limit_text}")
        except MultiPartException as exc:
            return error(400, f"malformed multipart upload ({exc.message})")
        except ValueError as exc:
            return error(400, f"malformed multipart upload ({exc})")
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return error(422, "missing the file: send the photo in a multipart field named 'file'")
            filename = _safe_filename(upload.filename)
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                return error(413, f"{filename}: upload too large; the limit is {limit_text}")
            part_type = (upload.content_type or "").lower()
            if part_type and not part_type.startswith(ACCEPTED_TYPES):
                return error(415, f"{filename}: not an image (Content-Type {part_type}); "
                                  "send a JPEG, PNG or WebP photo")
            if not data:
                return error(400, f"{filename}: empty file (0 bytes)")
            try:
                result = await run_in_threadpool(_predict_bytes, predictor, data, filename, top_k, threshold)
            except DataError as exc:
                return error(400, f"{filename}: {exc.reason}; send a JPEG, PNG or WebP photo")
            return JSONResponse(result)
        finally:
            await form.close()

    return app


def _predict_bytes(predictor: Predictor, data: bytes, filename: str, top_k: int | None,
                   threshold: float | None) -> dict[str, Any]:
    image, _ = to_uint8_chw(read_image_bytes(data, filename))
    result = predictor.predict_loaded([image], [filename], top_k=top_k, threshold=threshold)[0]
    return result.to_dict()


def _version() -> str:
    from fashionlens import __version__

    return __version__


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          max_upload_mb: float = 10.0) -> int:
    """Run the server with uvicorn until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    app = create_app(model_dir, max_upload_mb=max_upload_mb, runtime=runtime)
    shown = f"[{host}]" if ":" in host else host
    print(f"fashionlens: serving {model_dir} at http://{shown}:{port}/ (API docs at /docs); Ctrl+C stops it")
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
