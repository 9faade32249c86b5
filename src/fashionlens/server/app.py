"""Serve a model over HTTP: a JSON API and a web page that shows what the model sees in a photo.

    GET  /          the web page (drop a photo, see what is predicted: category, labels above their
                    calibrated thresholds by group, landmarks; every score folded below)
    GET  /health    {"status": "ok", "model": {...}} (the model directory's name, never its path)
    GET  /labels    the label vocabulary (and categories / landmark names for clothing models)
    POST /predict   multipart/form-data with the photo in the field ``file``; optional ?top_k=, and
                    ?threshold= (one cut-off instead of the model's calibrated thresholds)
    POST /explain   the same upload; ?label=NAME (or top): the prediction and that label's activation map
    POST /similar   the same upload; ?k=: the most similar catalogue photos (``serve --index``)
    GET  /similar/{id}/photo   a thumbnail of catalogue item ``id`` (only the index's own files are served)
    GET  /docs      the API described from /openapi.json by a page of our own (no CDN: works offline)

What an upload can cost is bounded before any of it is spent:

- at most ``max_concurrent_uploads`` uploads are read at once, at most ``max_uploads_per_client``
  of them from one client address; one more is answered 503 at once;
- Starlette parses the form (``request.form`` with its own limits: one file, a few fields, small
  text parts); the body's bytes are counted as they arrive and cut off as soon as they pass
  ``max_upload_mb`` (413), whatever Content-Length claims, and the whole form must arrive within
  ``upload_timeout_s`` (408, connection closed), so a client that announces more than it sends
  cannot hold a connection open;
- a body that ends before the multipart closing boundary is a 400 saying the upload was cut short;
  a client that disconnects mid-upload is one log line;
- photos are decoded by :mod:`fashionlens.images` (accepted formats sniffed from the header, the
  pixel limit checked before decoding, truncation refused), at most ``max_concurrent_decodes`` at
  once, and large JPEGs at reduced scale (``draft_side``, never below 1024 px on the long side);
  sizes and landmarks are still reported in the photo's own pixels.

``serve`` runs uvicorn as :func:`uvicorn_config` sets it up against slow clients: a deadline for
each request's headers, keep-alive, connections per client address, ``limit_concurrency``, and one
log line per cause of a flood instead of one per attempt.

The routes are module-level functions that read the model and the limits from
``request.app.state.serving``. The uploaded file name is only echoed back, never used as a path.
Decoding and inference run in a pool of ``max_concurrent_decodes`` threads of their own, so one
slow image never blocks the event loop, and the large buffers of decoding are allocated by those
few threads only: spread over the dozens of a general thread pool, each thread's malloc arena kept
its share of them after the request (docs/benchmarks.md, "Server memory").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware.trustedhost import TrustedHostMiddleware
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
# Half the upload slots per client address: slow sockets from one place (one byte every few seconds)
# used to hold every slot for as long as they kept trickling (issue 27 item 6), while a batch client
# still sends 16 photos at once (benchmarks/load_test.py's concurrency).
MAX_UPLOADS_PER_CLIENT = 16
# Connections, by the ASGI server (see uvicorn_config): a request's headers must arrive within
# HEADER_TIMEOUT_S (uvicorn itself has no such deadline: a socket trickling one header byte at a time
# was kept open for ever), an idle keep-alive connection is closed after KEEP_ALIVE_S, one client
# address keeps at most MAX_CONNECTIONS_PER_CLIENT connections open, and past MAX_CONNECTIONS in all
# uvicorn answers 503 (its limit_concurrency), below the usual limit of 1,024 open files.
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS_PER_CLIENT = 64
MAX_CONNECTIONS = 512
MAX_HEADER_BYTES = 16 * 1024  # h11's limit on a request's headers
# Decoding is where an upload's memory goes (3 bytes a pixel, and copies); the forward passes are
# serialised by the Predictor anyway, so a few decodes at once keep the CPU busy.
MAX_CONCURRENT_DECODES = 2
THUMBNAIL_SIDE = 192  # pixels on the long side of a similar item's photo on the page


class _UploadTooLarge(Exception):
    pass


class _NonFiniteScores(Exception):
    pass


class _CountedBody:
    """The request's ASGI ``receive``, counting the body's bytes against a limit and noting whether the
    multipart close delimiter went by: Starlette's form limits bound the parts, not the whole body, and
    its parser accepts a body that stops before the close delimiter."""

    def __init__(self, request: Request, limit: int, boundary: bytes):
        self.receive_next = request.receive
        self.limit = limit
        self.closing = b"--" + boundary + b"--"
        self.received = 0
        self.closed = False
        self.tail = b""

    async def receive(self) -> dict[str, Any]:
        message = await self.receive_next()
        chunk = message.get("body", b"") if message["type"] == "http.request" else b""
        self.received += len(chunk)
        if self.received > self.limit:
            raise _UploadTooLarge()
        if chunk and not self.closed:
            window = self.tail + chunk
            self.closed = self.closing in window
            self.tail = window[-len(self.closing):]
        return message


def _safe_filename(name: str | None) -> str:
    """The last path component, printable characters only: echoed back, never opened."""
    if not name:
        return "upload"
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[^\w.\- ()]", "_", base).strip(" .")
    return base[:120] or "upload"


def _static_text(name: str) -> str:
    return resources.files("fashionlens.server").joinpath("static", name).read_text(encoding="utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


@dataclass
class _Settings:
    """What the routes read from ``request.app.state.serving``: the model and the limits of one server."""

    predictor: Predictor
    index: SearchIndex | None
    model_name: str | None
    max_upload_mb: float
    upload_timeout_s: float
    max_concurrent_uploads: int
    max_uploads_per_client: int
    draft_side: int | None
    decoding: ThreadPoolExecutor
    uploads: int = 0  # being read or decoded now
    uploads_by_client: Counter = field(default_factory=Counter)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def create_app(model: str | Path | Predictor, max_upload_mb: float = 10.0, runtime: str = "torch", *,
               upload_timeout_s: float = UPLOAD_TIMEOUT_S, max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS,
               max_uploads_per_client: int = MAX_UPLOADS_PER_CLIENT,
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
    app = FastAPI(title="fashionlens", version=_version(), docs_url=None, redoc_url=None,
                  description="Fashion image recognition: styles, or category, attributes and landmarks. "
                              "POST a photo to /predict as multipart/form-data (field `file`).")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.serving = _Settings(
        predictor, search_index, Path(predictor.model_dir).resolve().name if predictor.model_dir else None,
        max_upload_mb, upload_timeout_s, max_concurrent_uploads, max_uploads_per_client, draft_side,
        ThreadPoolExecutor(max_workers=max(1, int(max_concurrent_decodes)), thread_name_prefix="fashionlens-decode"))
    _log_floods_once(logger.name)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(router)
    return app


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return _error(422, "; ".join(parts) or "invalid request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # One line here; the ASGI server prints the traceback itself (Starlette re-raises it).
    logger.error("unexpected %s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


router = APIRouter()
UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": f"a photo ({images.ACCEPTED_TEXT}), at most max_upload_mb "
                                           "(GET /health)"}}}}}}}
UPLOAD_ERRORS = {400: {"description": "corrupt, truncated or refused image, or a malformed upload"},
                 408: {"description": "upload not received within the server's upload timeout"},
                 413: {"description": "upload larger than max_upload_mb (GET /health)"},
                 415: {"description": "not multipart/form-data, or a part that is not an image"},
                 422: {"description": "no `file` field"},
                 503: {"description": "too many uploads at once"}}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(_static_text("index.html"))


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs() -> HTMLResponse:
    return HTMLResponse(_static_text("docs.html"))


@router.get("/health", summary="Liveness and model information")
def health(request: Request) -> dict[str, Any]:
    serving: _Settings = request.app.state.serving
    info = serving.predictor.info()
    info.pop("model_dir", None)  # an absolute path tells a client about the server's disk
    info["name"] = serving.model_name
    index = serving.index
    return {"status": "ok", "model": info, "max_upload_mb": serving.max_upload_mb,
            "similar": {"items": len(index), "kind": index.meta["kind"]} if index is not None else None,
            "explain": serving.predictor.runtime_name == "torch"}


@router.get("/labels", summary="The model's label vocabulary")
def labels(request: Request) -> dict[str, Any]:
    return request.app.state.serving.predictor.labels_info()


@router.post("/predict", summary="Predict one photo", openapi_extra=UPLOAD_SCHEMA, responses=UPLOAD_ERRORS)
async def predict(request: Request,
                  top_k: int | None = Query(None, ge=1, le=1000, description="labels to return (per type)"),
                  threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                  description="one cut-off for every label instead of the "
                                                              "model's calibrated per-label thresholds"),
                  ) -> JSONResponse:
    serving: _Settings = request.app.state.serving
    cut = "auto" if threshold is None else threshold  # the calibrated thresholds, as `predict` uses
    return await _with_upload(request, "/predict", lambda data, filename: functools.partial(
        _predict_bytes, serving.predictor, data, filename, top_k, cut, serving.draft_side))


@router.post("/explain", summary="Where in a photo a label's evidence is (its activation map)",
             openapi_extra=UPLOAD_SCHEMA,
             responses={**UPLOAD_ERRORS, 400: {"description": "as /predict, or an unknown label"},
                        501: {"description": "the server runs the ONNX runtime (maps need torch)"}})
async def explain(request: Request,
                  label: str = Query("top", max_length=200,
                                     description="a label name (an attribute's, for a clothing model), or "
                                                 "top: the highest-scoring one (label:NAME names any label, "
                                                 "one called top too)"),
                  ) -> JSONResponse:
    serving: _Settings = request.app.state.serving
    predictor = serving.predictor
    if predictor.runtime_name != "torch":
        return _error(501, f"activation maps need the torch runtime; this server runs {predictor.runtime_name}")
    if label != TOP_LABELS:
        try:
            predictor.label_index(label)
        except FashionlensError as exc:
            return _error(400, str(exc))
    return await _with_upload(request, "/explain", lambda data, filename: functools.partial(
        _explain_bytes, predictor, data, filename, label, serving.draft_side))


@router.post("/similar", summary="The catalogue photos most similar to a photo (needs serve --index)",
             openapi_extra=UPLOAD_SCHEMA,
             responses={**UPLOAD_ERRORS, 404: {"description": "the server was started without --index"}})
async def similar(request: Request, k: int = Query(10, ge=1, le=100, description="how many similar items"),
                  ) -> JSONResponse:
    serving: _Settings = request.app.state.serving
    if serving.index is None:
        return _error(404, "no similarity index: start the server with `fashionlens serve MODEL --index INDEX` "
                           "(build one with `fashionlens embed` and `fashionlens index`)")
    return await _with_upload(request, "/similar", lambda data, filename: functools.partial(
        _similar_bytes, serving.predictor, serving.index, data, filename, k, serving.draft_side))


@router.get("/similar/{item}/photo", summary="A thumbnail of a catalogue item of the index",
            responses={404: {"description": "no such item, or no index"}})
async def similar_photo(request: Request, item: int) -> Response:
    serving: _Settings = request.app.state.serving
    if serving.index is None or not 0 <= item < len(serving.index):
        return _error(404, f"no catalogue item {item}")
    try:
        data = await asyncio.get_running_loop().run_in_executor(
            serving.decoding, _thumbnail, Path(serving.index.files[item]), THUMBNAIL_SIDE)
    except DataError as exc:
        return _error(404, f"catalogue item {item}: {exc.reason}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def _with_upload(request: Request, route: str, work) -> JSONResponse:
    """Read one uploaded photo within the limits, then run ``work(data, filename)`` (a callable for
    the decoding pool) and answer with its result."""
    serving: _Settings = request.app.state.serving
    client = request.client.host if request.client else "unknown"
    if serving.uploads >= serving.max_concurrent_uploads:
        logger.warning(BUSY, serving.max_concurrent_uploads)
        return _error(503, f"server busy: {serving.uploads} uploads in progress, the limit is "
                           f"{serving.max_concurrent_uploads}; retry in a moment", headers={"Retry-After": "1"})
    if serving.uploads_by_client[client] >= serving.max_uploads_per_client:
        logger.warning(CLIENT_BUSY, client, serving.max_uploads_per_client)
        return _error(503, f"too many uploads from {client} at once: the limit is {serving.max_uploads_per_client} "
                           "per client; retry when one has finished", headers={"Retry-After": "1"})
    serving.uploads += 1
    serving.uploads_by_client[client] += 1
    try:
        return await _handle_upload(request, serving, route, work)
    finally:
        serving.uploads -= 1
        serving.uploads_by_client[client] -= 1
        if not serving.uploads_by_client[client]:
            del serving.uploads_by_client[client]


async def _handle_upload(request: Request, serving: _Settings, route: str, work) -> JSONResponse:
    limit_text = f"{serving.max_upload_mb:g} MB"
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return _error(415, "send the photo as multipart/form-data in a field named 'file' "
                           f"(got Content-Type {content_type or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            return _error(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > serving.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
            return _error(413, f"upload too large ({int(declared) / 1024 / 1024:.1f} MB); the limit is {limit_text}")
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        return _error(400, "malformed multipart upload (no boundary in the Content-Type header)")
    body = _CountedBody(request, serving.max_upload_bytes + MULTIPART_OVERHEAD_BYTES, boundary)
    counted = Request(request.scope, body.receive)
    of_declared = f" of the {int(declared)} that Content-Length announced" if declared is not None else ""
    timeout = serving.upload_timeout_s
    try:
        # Starlette's own limits on the parts; the whole body within the upload deadline.
        form = await asyncio.wait_for(counted.form(max_files=1, max_fields=8, max_part_size=64 * 1024), timeout)
    except _UploadTooLarge:
        return _error(413, f"upload too large; the limit is {limit_text}")
    except TimeoutError:
        logger.warning("upload to %s timed out after %g s (%d bytes%s received)", route, timeout, body.received,
                       of_declared)
        return _error(408, f"upload timed out: {body.received} bytes{of_declared} arrived in {timeout:g} s; "
                           f"the whole upload must arrive within {timeout:g} s", headers={"Connection": "close"})
    except ClientDisconnect:
        logger.warning("client disconnected during the upload to %s (%d bytes%s received)", route, body.received,
                       of_declared)
        return _error(400, "client disconnected")  # nobody is left to read it
    except (StarletteHTTPException, MultiPartException, ValueError) as exc:
        reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
        return _error(400, f"malformed multipart upload ({reason})")
    try:
        if not body.closed:
            return _error(400, _cut_short(body.received, of_declared))
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return _error(422, "missing the file: send the photo in a multipart field named 'file'")
        filename = _safe_filename(upload.filename)
        data = await upload.read(serving.max_upload_bytes + 1)
        if len(data) > serving.max_upload_bytes:
            return _error(413, f"{filename}: upload too large; the limit is {limit_text}")
        part_type = (upload.content_type or "").lower()
        if part_type and not part_type.startswith(ACCEPTED_TYPES):
            return _error(415, f"{filename}: not an image (Content-Type {part_type}); "
                               f"send a {images.ACCEPTED_TEXT} photo")
        if not data:
            return _error(400, f"{filename}: empty file (0 bytes)")
        try:
            result = await asyncio.get_running_loop().run_in_executor(serving.decoding, work(data, filename))
        except DataError as exc:
            return _error(400, f"{filename}: {exc.reason}")
        except _NonFiniteScores:
            logger.error("the model gave non-finite scores for %s", filename)
            return _error(500, f"{filename}: the model gave non-finite scores (NaN or infinity) for this photo; "
                               "its weights are broken")
        return JSONResponse(result)
    finally:
        await form.close()


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


# Log lines that a flood repeats (per attempt): _OncePerCause lets the first of each through, as one
# line, and drops its repeats for a minute.
BUSY = "uploads refused with 503: the server's limit of %d uploads at once is reached"
CLIENT_BUSY = "uploads from %s refused with 503: its limit of %d uploads at once is reached"
HEADERS_LATE = "closed a connection from %s: its request headers did not arrive within %g s"
CLIENT_CONNECTIONS = "closed a connection from %s at once: it holds %d connections, the limit per client"
FLOODS = (BUSY, CLIENT_BUSY, HEADERS_LATE, CLIENT_CONNECTIONS,
          "socket.accept() out of system resource",  # asyncio, with a traceback, when file descriptors run out
          "Exceeded concurrency limit.")  # uvicorn, for each request over limit_concurrency


class _OncePerCause(logging.Filter):
    def __init__(self, period_s: float = 60.0):
        super().__init__()
        self.period_s = period_s
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        cause = next((flood for flood in FLOODS if message.startswith(flood)), None)
        if cause is None:
            return True
        now = time.monotonic()
        if now - self.last.get(cause, -self.period_s) < self.period_s:
            return False
        self.last[cause] = now
        record.msg = message.split("\n")[0] + f" (repeats in the next {self.period_s:g} s are not logged)"
        record.exc_info = record.exc_text = None
        return True


_ONCE = _OncePerCause()


def _log_floods_once(*names: str) -> None:
    for name in names:
        log = logging.getLogger(name)
        if _ONCE not in log.filters:
            log.addFilter(_ONCE)


def _guarded_protocol(header_timeout_s: float, max_connections_per_client: int) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers and a per-client connection limit."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        headers_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            held = sum(1 for other in self.connections if host is not None and other.client
                       and other.client[0] == host)
            if held > max_connections_per_client:
                logger.warning(CLIENT_CONNECTIONS, host, max_connections_per_client)
                transport.close()
                return
            self._await_headers()

        def _await_headers(self) -> None:
            if self.headers_deadline is not None:
                self.headers_deadline.cancel()
            self.headers_deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _headers_late(self) -> None:
            # IDLE: no request has begun, or its headers are still arriving (a body has its own deadline).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.warning(HEADERS_LATE, self.client[0] if self.client else "unknown", header_timeout_s)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_headers()  # the next request's headers on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            if self.headers_deadline is not None:
                self.headers_deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *,
                   header_timeout_s: float = HEADER_TIMEOUT_S,
                   max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                   max_connections: int = MAX_CONNECTIONS, **options: Any):
    """The uvicorn configuration ``serve`` runs ``app`` with: header and keep-alive deadlines, a
    per-client connection limit, uvicorn's limit_concurrency, and one log line per flood's cause."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, timeout_keep_alive=KEEP_ALIVE_S,
                            http=_guarded_protocol(header_timeout_s, max_connections_per_client),
                            limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                            **options)
    _log_floods_once("uvicorn.error", "asyncio")  # after Config, which configures uvicorn's loggers
    return config


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          max_upload_mb: float = 10.0, index: str | Path | None = None, allow_hosts: Sequence[str] = ()) -> int:
    """Run the server with uvicorn until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    app = create_app(model_dir, max_upload_mb=max_upload_mb, runtime=runtime, index=index,
                     allowed_hosts=local_hosts(host, allow_hosts))
    shown = f"[{host}]" if ":" in host else host
    source = getattr(app.state.serving.predictor.runtime, "source", "")
    if source:
        print(source)  # which ONNX file runs, and why that one
    print(f"fashionlens: serving {model_dir} at http://{shown}:{port}/ (API docs at /docs); Ctrl+C stops it")
    uvicorn.Server(uvicorn_config(app, host, port, log_level="info")).run()
    return 0
