"""Serve a model over HTTP: a JSON API and a web page that shows what the model sees in a photo.

    GET  /          the web page (drop a photo, see scores, category, attributes, landmarks)
    GET  /health    {"status": "ok", "model": {...}} (the model directory's name, never its path)
    GET  /labels    the label vocabulary (and categories / landmark names for clothing models)
    POST /predict   multipart/form-data with the photo in the field ``file``; optional ?top_k=
    POST /explain   the same upload; ?label=NAME (or top): the prediction and that label's activation map
    POST /similar   the same upload; ?k=: the most similar catalogue photos (``serve --index``)
    GET  /similar/{id}/photo   a thumbnail of catalogue item ``id`` (only the index's own files are served)
    GET  /docs      the API described from /openapi.json by a page of our own (no CDN: works offline)

What an upload can cost is bounded before any of it is spent:

- at most ``max_concurrent_uploads`` uploads are read at once; one more is answered 503 at once;
- the body is read as a stream and cut off as soon as it passes ``max_upload_mb`` (413), whatever
  Content-Length claims, and it must arrive within ``upload_timeout_s`` (408, connection closed),
  so a client that announces more than it sends cannot hold a connection open;
- a body that ends before the multipart closing boundary is a 400 saying the upload was cut short;
  a client that disconnects mid-upload is one log line;
- photos are decoded by :mod:`fashionlens.images` (accepted formats sniffed from the header, the
  pixel limit checked before decoding, truncation refused), at most ``max_concurrent_decodes`` at
  once, and large JPEGs at reduced scale (``draft_side``, never below 1024 px on the long side);
  sizes and landmarks are still reported in the photo's own pixels.

The uploaded file name is only echoed back, never used as a path. Decoding and inference run in a
pool of ``max_concurrent_decodes`` threads of their own, so one slow image never blocks the event
loop, and the large buffers of decoding are allocated by those few threads only: spread over the
dozens of a general thread pool, each thread's malloc arena kept its share of them after the
request (docs/benchmarks.md, "Server memory").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fashionlens import images
from fashionlens.errors import DataError, FashionlensError
from fashionlens.inference import TOP_LABELS, Predictor, load, to_uint8_chw
from fashionlens.search import SearchIndex

logger = logging.getLogger("fashionlens.server")

# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
ACCEPTED_TYPES = ("image/", "application/octet-stream")
UPLOAD_TIMEOUT_S = 30.0
MAX_CONCURRENT_UPLOADS = 32
# Decoding is where an upload's memory goes (3 bytes a pixel, and copies); the forward passes are
# serialised by the Predictor anyway, so a few decodes at once keep the CPU busy.
MAX_CONCURRENT_DECODES = 2
THUMBNAIL_SIDE = 192  # pixels on the long side of a similar item's photo on the page


class _UploadTooLarge(Exception):
    pass


class _UploadTimedOut(Exception):
    pass


class _ClientGone(Exception):
    pass


class _NonFiniteScores(Exception):
    pass


class _BodyReader:
    """The request body as a stream with a size limit and a deadline, noting the closing boundary."""

    def __init__(self, request: Request, limit: int, timeout_s: float, boundary: bytes):
        self.request = request
        self.limit = limit
        self.timeout_s = timeout_s
        self.closing = b"--" + boundary + b"--"
        self.received = 0
        self.closed = False  # the multipart close delimiter has been seen

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        stream = self.request.stream()
        tail = b""
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _UploadTimedOut()
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), remaining)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _UploadTimedOut() from None
                except ClientDisconnect:
                    raise _ClientGone() from None
                self.received += len(chunk)
                if self.received > self.limit:
                    raise _UploadTooLarge()
                if not self.closed:
                    window = tail + chunk
                    self.closed = self.closing in window
                    tail = window[-len(self.closing):]
                yield chunk
        finally:
            await stream.aclose()


def _safe_filename(name: str | None) -> str:
    """The last path component, printable characters only: echoed back, never opened."""
    if not name:
        return "upload"
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[^\w.\- ()]", "_", base).strip(" .")
    return base[:120] or "upload"


def _static_text(name: str) -> str:
    return resources.files("fashionlens.server").joinpath("static", name).read_text(encoding="utf-8")


def _boundary(content_type: str) -> bytes | None:
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    return boundary or None


def create_app(model: str | Path | Predictor, max_upload_mb: float = 10.0, runtime: str = "torch", *,
               upload_timeout_s: float = UPLOAD_TIMEOUT_S, max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS,
               max_concurrent_decodes: int = MAX_CONCURRENT_DECODES,
               draft_side: int | None = images.SERVER_DRAFT_SIDE,
               index: str | Path | SearchIndex | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The FastAPI application for a model directory (loaded with ``runtime``) or a ready Predictor.

    ``draft_side=None`` decodes every pixel of every upload (the same pixels as ``predict``); otherwise
    a large JPEG keeps at least ``draft_side`` pixels, and twice the model's input, on its long side.
    ``index`` (a ``fashionlens index`` folder built from this model's vectors) enables ``POST /similar``.
    ``allowed_hosts``: the ``Host`` headers answered (Starlette's TrustedHostMiddleware; any other gets
    400), so that a web page whose name was re-pointed at this machine (DNS rebinding) cannot read it;
    None answers every host (``serve`` passes the bound address and localhost).
    """
    predictor = model if isinstance(model, Predictor) else load(model, runtime=runtime)
    search_index = SearchIndex.load(index) if isinstance(index, (str, Path)) else index
    if search_index is not None:
        predictor.torch_model("serve --index")  # queries are embedded by the torch model
        search_index.check_model(predictor)
    if draft_side is not None:
        draft_side = max(int(draft_side), 2 * predictor.image_size)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    limit_text = f"{max_upload_mb:g} MB"
    model_name = Path(predictor.model_dir).resolve().name if predictor.model_dir else None
    decoding = ThreadPoolExecutor(max_workers=max(1, int(max_concurrent_decodes)),
                                  thread_name_prefix="fashionlens-decode")
    in_flight = {"uploads": 0}

    app = FastAPI(title="fashionlens", version=_version(), docs_url=None, redoc_url=None,
                  description="Fashion image recognition: styles, or category, attributes and landmarks. "
                              "POST a photo to /predict as multipart/form-data (field `file`).")
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.predictor = predictor
    app.state.max_upload_bytes = max_bytes
    app.state.decoding = decoding
    app.state.in_flight = in_flight
    app.state.index = search_index

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

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
        # One line here; the ASGI server prints the traceback itself (Starlette re-raises it).
        logger.error("unexpected %s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_static_text("docs.html"))

    @app.get("/health", summary="Liveness and model information")
    def health() -> dict[str, Any]:
        info = predictor.info()
        info.pop("model_dir", None)  # an absolute path tells a client about the server's disk
        info["name"] = model_name
        similar = {"items": len(search_index), "kind": search_index.meta["kind"]} if search_index else None
        return {"status": "ok", "model": info, "max_upload_mb": max_upload_mb, "similar": similar,
                "explain": predictor.runtime_name == "torch"}

    @app.get("/labels", summary="The model's label vocabulary")
    def labels() -> dict[str, Any]:
        return predictor.labels_info()

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": f"a photo ({images.ACCEPTED_TEXT}), at most {limit_text}"}}}}}}}

    @app.post("/predict", summary="Predict one photo", openapi_extra=upload_schema,
              responses={400: {"description": "corrupt, truncated or refused image, or a malformed upload"},
                         408: {"description": f"upload not received within {upload_timeout_s:g} s"},
                         413: {"description": f"upload larger than {limit_text}"},
                         415: {"description": "not multipart/form-data, or a part that is not an image"},
                         422: {"description": "no `file` field"},
                         503: {"description": f"more than {max_concurrent_uploads} uploads at once"}})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, le=1000, description="labels to return (per type)"),
                      threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                      description="one cut-off for every label instead of the "
                                                                  "model's calibrated per-label thresholds"),
                      ) -> JSONResponse:
        cut = "auto" if threshold is None else threshold  # the calibrated thresholds, as `predict` uses
        return await _with_upload(request, "/predict", lambda data, filename: functools.partial(
            _predict_bytes, predictor, data, filename, top_k, cut, draft_side))

    @app.post("/explain", summary="Where in a photo a label's evidence is (its activation map)",
              openapi_extra=upload_schema,
              responses={400: {"description": "corrupt, truncated or refused image, a malformed upload, or an "
                                              "unknown label"},
                         413: {"description": f"upload larger than {limit_text}"},
                         501: {"description": "the server runs the ONNX runtime (maps need torch)"}})
    async def explain(request: Request,
                      label: str = Query("top", max_length=200,
                                         description="a label name (an attribute's, for a clothing model), or "
                                                     "top: the highest-scoring one (label:NAME names any label, "
                                                     "one called top too)"),
                      ) -> JSONResponse:
        if predictor.runtime_name != "torch":
            return error(501, f"activation maps need the torch runtime; this server runs {predictor.runtime_name}")
        if label != TOP_LABELS:
            try:
                predictor.label_index(label)
            except FashionlensError as exc:
                return error(400, str(exc))
        return await _with_upload(request, "/explain", lambda data, filename: functools.partial(
            _explain_bytes, predictor, data, filename, label, draft_side))

    @app.post("/similar", summary="The catalogue photos most similar to a photo (needs serve --index)",
              openapi_extra=upload_schema,
              responses={404: {"description": "the server was started without --index"},
                         413: {"description": f"upload larger than {limit_text}"}})
    async def similar(request: Request,
                      k: int = Query(10, ge=1, le=100, description="how many similar items"),
                      ) -> JSONResponse:
        if search_index is None:
            return error(404, "no similarity index: start the server with `fashionlens serve MODEL --index INDEX` "
                              "(build one with `fashionlens embed` and `fashionlens index`)")
        return await _with_upload(request, "/similar", lambda data, filename: functools.partial(
            _similar_bytes, predictor, search_index, data, filename, k, draft_side))

    @app.get("/similar/{item}/photo", summary="A thumbnail of a catalogue item of the index",
             responses={404: {"description": "no such item, or no index"}})
    async def similar_photo(item: int) -> Response:
        if search_index is None or not 0 <= item < len(search_index):
            return error(404, f"no catalogue item {item}")
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                decoding, _thumbnail, Path(search_index.files[item]), THUMBNAIL_SIDE)
        except DataError as exc:
            return error(404, f"catalogue item {item}: {exc.reason}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def _with_upload(request: Request, route: str, work) -> JSONResponse:
        """Read one uploaded photo within the limits, then run ``work(data, filename)`` (a callable for
        the decoding pool) and answer with its result."""
        if in_flight["uploads"] >= max_concurrent_uploads:
            return error(503, f"server busy: {in_flight['uploads']} uploads in progress, the limit is "
                              f"{max_concurrent_uploads}; retry in a moment", headers={"Retry-After": "1"})
        in_flight["uploads"] += 1
        try:
            return await _handle_upload(request, route, work)
        finally:
            in_flight["uploads"] -= 1

    async def _handle_upload(request: Request, route: str, work) -> JSONResponse:
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
        boundary = _boundary(content_type)
        if boundary is None:
            return error(400, "malformed multipart upload (no boundary in the Content-Type header)")

        body = _BodyReader(request, max_bytes + MULTIPART_OVERHEAD_BYTES, upload_timeout_s, boundary)
        of_declared = f" of the {int(declared)} that Content-Length announced" if declared is not None else ""
        parser = MultiPartParser(request.headers, body.chunks(), max_files=1, max_fields=8,
                                 max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except _UploadTooLarge:
            return error(413, f"upload too large; the limit is {limit_text}")
        except _UploadTimedOut:
            logger.warning("upload to %s timed out after %g s (%d bytes%s received)", route, upload_timeout_s,
                           body.received, of_declared)
            return error(408, f"upload timed out: {body.received} bytes{of_declared} arrived in "
                              f"{upload_timeout_s:g} s; the whole upload must arrive within {upload_timeout_s:g} s",
                         headers={"Connection": "close"})
        except _ClientGone:
            logger.warning("client disconnected during the upload to %s (%d bytes%s received)", route,
                           body.received, of_declared)
            return error(400, "client disconnected")  # nobody is left to read it
        except (MultiPartException, ValueError) as exc:
            return error(400, f"malformed multipart upload ({getattr(exc, 'message', exc)})")
        try:
            if not body.closed:
                return error(400, _cut_short(body.received, of_declared))
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
                                  f"send a {images.ACCEPTED_TEXT} photo")
            if not data:
                return error(400, f"{filename}: empty file (0 bytes)")
            try:
                result = await asyncio.get_running_loop().run_in_executor(decoding, work(data, filename))
            except DataError as exc:
                return error(400, f"{filename}: {exc.reason}")
            except _NonFiniteScores:
                logger.error("the model gave non-finite scores for %s", filename)
                return error(500, f"{filename}: the model gave non-finite scores (NaN or infinity) for this photo; "
                                  "its weights are broken")
            return JSONResponse(result)
        finally:
            await form.close()

    return app


def _cut_short(received: int, of_declared: str) -> str:
    return (f"the upload was cut short: the multipart body ended before its closing boundary after "
            f"{received} bytes{of_declared}; send the whole file again")


def _predict_bytes(predictor: Predictor, data: bytes, filename: str, top_k: int | None, threshold: float | str,
                   draft_side: int | None) -> dict[str, Any]:
    image, full_size, scale = _decode_upload(data, filename, draft_side)
    result = predictor.predict_loaded([image], [filename], top_k=top_k, threshold=threshold)[0].to_dict()
    if scale != 1:
        _to_full_size(result, full_size, scale)
    try:
        json.dumps(result, allow_nan=False)
    except ValueError:
        raise _NonFiniteScores() from None
    return result


def _decode_upload(data: bytes, filename: str, draft_side: int | None) -> tuple[Any, tuple[int, int], int]:
    """An upload as an upright uint8 tensor, the photo's full size and the draft scale. Only the tensor
    leaves: the PIL copy is freed on return, before the forward pass."""
    decoded = images.decode_image(data, filename, draft_side=draft_side)
    full_size, scale = decoded.full_size, decoded.scale
    image, _ = to_uint8_chw(decoded.image)
    return image, full_size, scale


def _explain_bytes(predictor: Predictor, data: bytes, filename: str, label: str,
                   draft_side: int | None) -> dict[str, Any]:
    """The prediction and one label's map (``label`` or the top one): the map's grid covers the whole
    photo, so the page stretches it over the photo; the peak is in the photo's own pixels."""
    image, full_size, scale = _decode_upload(data, filename, draft_side)
    explanation = predictor.explain_loaded([image], [filename], labels=label)[0]
    result = explanation.to_dict()
    if scale != 1:
        _to_full_size(result["prediction"], full_size, scale)
        result["image"] = {"width": full_size[0], "height": full_size[1]}
        for item in result["maps"]:
            item["peak"] = {axis: (value + 0.5) * scale - 0.5 for axis, value in item["peak"].items()}
    try:
        json.dumps(result, allow_nan=False)
    except ValueError:
        raise _NonFiniteScores() from None
    return result


def _similar_bytes(predictor: Predictor, index: SearchIndex, data: bytes, filename: str, k: int,
                   draft_side: int | None) -> dict[str, Any]:
    image, full_size, _ = _decode_upload(data, filename, draft_side)
    vector = predictor.embed_preprocessed(predictor.preprocess(image)[None])
    if not np.all(np.isfinite(vector)):
        raise _NonFiniteScores()
    matches = index.search(vector, k)[0]
    return {"source": filename, "image": {"width": full_size[0], "height": full_size[1]},
            # The photo's file name, never its path: the catalogue's folders are the server's business.
            "items": [{**match.to_dict(), "path": Path(match.path).name, "photo": f"similar/{match.id}/photo"}
                      for match in matches]}


def _thumbnail(path: Path, side: int) -> bytes:
    """A catalogue photo as a JPEG at most ``side`` pixels on its long side (decoded by the one decoder)."""
    import io

    picture = images.decode_image(path, draft_side=2 * side).image
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _to_full_size(result: dict[str, Any], full_size: tuple[int, int], scale: int) -> None:
    """Sizes and landmarks of a photo decoded at 1/``scale``, in the photo's own pixels."""
    result["image"] = {"width": full_size[0], "height": full_size[1]}
    for landmark in result.get("landmarks", ()):
        # Decoded pixel i covers the photo's pixels [i * scale, (i + 1) * scale): its centre is
        # (i + 0.5) * scale - 0.5 in the pixel-centre convention the Predictor uses.
        landmark["x"] = (landmark["x"] + 0.5) * scale - 0.5
        landmark["y"] = (landmark["y"] + 0.5) * scale - 0.5


def _version() -> str:
    from fashionlens import __version__

    return __version__


def local_hosts(host: str, extra: Sequence[str] = ()) -> list[str] | None:
    """The Host headers a server bound to ``host`` answers: that address and localhost's names, plus
    ``extra``; None (every host) when it listens on every address or ``extra`` holds ``*``."""
    if host in ("0.0.0.0", "::", "") or "*" in extra:
        return None
    return list(dict.fromkeys([host, "localhost", "127.0.0.1", "::1", *extra]))


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          max_upload_mb: float = 10.0, index: str | Path | None = None, allow_hosts: Sequence[str] = ()) -> int:
    """Run the server with uvicorn until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    app = create_app(model_dir, max_upload_mb=max_upload_mb, runtime=runtime, index=index,
                     allowed_hosts=local_hosts(host, allow_hosts))
    shown = f"[{host}]" if ":" in host else host
    print(f"fashionlens: serving {model_dir} at http://{shown}:{port}/ (API docs at /docs); Ctrl+C stops it")
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
