"""The HTTP face of the search service: a FastAPI app over one ``SearchBackend``, plus the web page.

Every error is JSON ``{"error": "..."}`` with a 4xx status: the backend's ``RequestError``, FastAPI's
own checks of the query parameters (422, bounds documented in /openapi.json), unknown routes (404).
The page (``static/``) is plain HTML and a small script calling the same endpoints.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

from models.attention import PairAttention
from models.retrieval import MODES
from models.search import QueryResult
from models.service.backend import MAX_ID_CHARS, MAX_K, MAX_QUERY_CHARS, RequestError, SearchBackend
from pipeline.captions import SPECIALS
from pipeline.errors import InputError

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"  # Swagger UI's files from the pinned swagger-ui-bundle: /docs works offline
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
TEXT = Query(None, max_length=MAX_QUERY_CHARS, description="Caption query (text -> images).")
IMAGE = Query(None, max_length=MAX_ID_CHARS, description="Store image id (image -> captions).")
K = Query(10, ge=1, le=MAX_K, description="Results to return.")
MODE = Query("two-stage", description=f"Ranking: {' | '.join(MODES)} (see README, Search).")


def create_app(backend: SearchBackend) -> FastAPI:
    """The app serving ``backend``: /api/search, /api/attention, /api/images/ID, /healthz and the page at /."""
    app = FastAPI(title="SCAN search", version="1", description="Text -> images, image -> captions, and where "
                  "each word attends, from a trained SCAN model over a feature store. Read only.",
                  docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_docs(app)

    @app.get("/healthz")
    def healthz() -> dict:
        return backend.health()

    @app.get("/api/search")
    def search(text: str | None = TEXT, image: str | None = IMAGE, k: int = K, mode: str = MODE) -> dict:
        if (text is None) == (image is None):
            raise RequestError(400, "give exactly one of text=... (caption -> images) or image=ID (image -> captions)")
        result = backend.search_text(text, k, mode) if text is not None else backend.search_image(image, k, mode)
        return search_document(result, mode, k, backend.images_root is not None)

    @app.get("/api/attention")
    def attention(image: str = Query(..., max_length=MAX_ID_CHARS, description="Store image id."),
                  text: str = Query(..., max_length=MAX_QUERY_CHARS, description="Caption to explain.")) -> dict:
        return attention_document(backend.attention(image, text))

    @app.get("/api/images/{image_id:path}")
    def image_file(image_id: str) -> FileResponse:
        return FileResponse(backend.image_file(image_id), headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI served from this app (FastAPI's default fetches it from a CDN, blank offline)."""
    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    def refused(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in error.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(HTTPException)
    def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def search_document(result: QueryResult, mode: str, k: int, with_files: bool) -> dict:
    """The JSON of one query: hits with rank, score, image id (and its file URL), caption."""
    hits = [{"rank": hit.rank, "score": round(hit.score, 6), "image_id": hit.image_id, "caption": hit.caption,
             "image_url": f"/api/images/{quote(hit.image_id, safe='')}" if with_files and hit.image_id else None}
            for hit in result.hits]
    return {"query": result.query, "kind": result.kind, "mode": mode, "k": k, "hits": hits}


def attention_document(attention: PairAttention) -> dict:
    """The attention JSON: words, region boxes (in the stored image's pixels) and both weight matrices.

    word_to_region[w][r] (t2i) and region_to_word[r][w] (i2t) are ``models.attention.explain_pair``'s
    weights, the ones the attention pictures draw; score is the model's similarity of the pair.
    """
    return {"image_id": attention.image_id, "caption": attention.caption, "score": attention.score,
            "cross_attn": attention.cross_attn, "image_hw": list(attention.image_hw),
            "words": [{"word": word, "special": word in SPECIALS[:3], "relevance": _rounded(relevance)}
                      for word, relevance in zip(attention.words, attention.word_relevance)],
            "regions": [{"box": _rounded(box), "relevance": _rounded(relevance)}
                        for box, relevance in zip(attention.boxes, attention.region_relevance)],
            "word_to_region": _rounded(attention.word_to_region), "region_to_word": _rounded(attention.region_to_word)}


def _rounded(values: np.ndarray | float) -> list | float:
    return np.round(np.asarray(values, dtype=np.float64), 6).tolist()


def remote_warning(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; for any other, the warning to print when ``allow_remote``, else InputError."""
    if _is_loopback(host):
        return None
    if not allow_remote:
        raise InputError(f"--host {host}", "not a loopback address, and the service has no authentication; "
                                           "pass --allow-remote to expose it anyway")
    return (f"WARNING: serving on {host}: anyone who can reach this address can query the model and read the "
            "images under --images-root (no authentication, no TLS)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
