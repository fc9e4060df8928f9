"""The service over HTTP: a real uvicorn on a loopback port, a real httpx client, every endpoint and its errors."""
from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from models.attention_viz import draw_pair
from models.search import SearchConfig, SearchIndex
from models.service.backend import MAX_QUERY_CHARS
from tests.models.service.conftest import CAPTIONS, ESCAPING, build_service_files, running, tree_state
from tests.models.test_search import QUERY, TARGET


def get(base_url: str, path: str, **params) -> httpx.Response:
    return httpx.get(base_url + path, params=params, timeout=30)


def test_health_names_the_gallery_and_the_saved_index(base_url):
    body = get(base_url, "/healthz").json()
    assert body["status"] == "ok" and body["images"] == 13 and body["captions"] == len(CAPTIONS)
    assert "up to date" in body["index"]


@pytest.mark.parametrize("mode", ["exact", "two-stage", "global"])
def test_text_search_returns_the_built_match_first(base_url, service, mode):
    body = get(base_url, "/api/search", text=QUERY, k=5, mode=mode).json()
    assert body["kind"] == "text" and len(body["hits"]) == 5
    if mode != "global":  # the untrained global head ranks by chance
        assert body["hits"][0]["image_id"] == TARGET
    assert body["hits"][0]["image_url"] == f"/api/images/{body['hits'][0]['image_id']}"
    expected = SearchIndex.open(service.files.checkpoint, service.files.store, service.files.vocab,
                                policy="require").search_text([QUERY], SearchConfig(top_k=5, mode=mode))[0]
    assert [hit["image_id"] for hit in body["hits"]] == [hit.image_id for hit in expected.hits]
    assert [hit["score"] for hit in body["hits"]] == pytest.approx([hit.score for hit in expected.hits], abs=1e-5)


def test_image_search_returns_its_caption_first(base_url):
    body = get(base_url, "/api/search", image=TARGET, k=3, mode="exact").json()
    assert body["kind"] == "image" and body["hits"][0]["caption"] == QUERY
    assert [hit["rank"] for hit in body["hits"]] == [1, 2, 3]


def test_attention_is_the_pictures_attention_with_the_scores_logits(base_url, service, tmp_path):
    body = get(base_url, "/api/attention", image=TARGET, text=QUERY).json()
    files = service.files
    _, drawn = draw_pair(files.checkpoint, files.store, files.vocab, TARGET, QUERY, tmp_path / "a.png")
    assert [word["word"] for word in body["words"]] == drawn.words
    np.testing.assert_allclose(body["word_to_region"], drawn.word_to_region, atol=1e-6)
    np.testing.assert_allclose(body["region_to_word"], drawn.region_to_word, atol=1e-6)
    np.testing.assert_allclose([region["box"] for region in body["regions"]], drawn.boxes, atol=1e-5)
    assert body["image_hw"] == [100, 120] and body["score"] == pytest.approx(drawn.score, abs=1e-6)
    np.testing.assert_allclose(np.sum(body["word_to_region"], axis=1), 1, atol=1e-5)
    exact = get(base_url, "/api/search", text=QUERY, k=1, mode="exact").json()["hits"][0]
    assert exact["score"] == pytest.approx(body["score"], abs=2e-3)  # the index keeps regions in float16
    assert [word["special"] for word in body["words"]][0] and not body["words"][1]["special"]


def test_image_file_comes_from_the_images_root(base_url, service):
    response = get(base_url, f"/api/images/{TARGET}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (service.files.images_root / "images" / f"{TARGET}.png").read_bytes()


LONG = "a " * (MAX_QUERY_CHARS // 2 + 1)
BAD_REQUESTS = [
    ("/api/search", {"text": ""}, 400, "empty query"),
    ("/api/search", {"text": "   "}, 400, "empty query"),
    ("/api/search", {"text": LONG}, 422, "at most 300 characters"),
    ("/api/search", {"text": QUERY, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/api/search", {"text": QUERY, "k": 1001}, 422, "k: Input should be less than or equal to 1000"),
    ("/api/search", {"text": QUERY, "k": "ten"}, 422, "k: Input should be a valid integer"),
    ("/api/search", {"text": QUERY, "mode": "fast"}, 400, "expected one of exact, two-stage, global"),
    ("/api/search", {}, 400, "exactly one of"),
    ("/api/search", {"text": QUERY, "image": TARGET}, 400, "exactly one of"),
    ("/api/search", {"image": "img99"}, 404, "unknown image id 'img99'"),
    ("/api/search", {"image": "../../etc/passwd"}, 404, "unknown image id"),
    ("/api/attention", {"image": "nope", "text": QUERY}, 404, "unknown image id 'nope'"),
    ("/api/attention", {"image": TARGET, "text": ""}, 400, "empty query"),
    ("/api/attention", {"image": TARGET}, 422, "text: Field required"),
    ("/api/images/img99", {}, 404, "unknown image id"),
    ("/api/images/..%2F..%2Fetc%2Fpasswd", {}, 404, "unknown image id '../../etc/passwd'"),
    ("/api/images/%2e%2e/%2e%2e/etc/passwd", {}, 404, "unknown image id"),
    ("/api/images/%2Fetc%2Fpasswd", {}, 404, "unknown image id '/etc/passwd'"),
    (f"/api/images/{ESCAPING}", {}, 404, "no image file for 'escape' under the images root"),
    ("/api/nothing", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("path, params, status, message", BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_json_error(base_url, path, params, status, message):
    response = get(base_url, path, **params)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_raw_dot_segments_never_reach_a_file(base_url):
    """A client that does not normalise the path (curl --path-as-is) still gets a 404, never /etc/passwd."""
    with httpx.Client(base_url=base_url) as client:
        for raw in (b"/api/images/../../../../etc/passwd", b"/api/images/..%2f..%2f..%2fetc%2fpasswd"):
            request = client.build_request("GET", "/")
            request.url = request.url.copy_with(raw_path=raw)
            response = client.send(request)
            assert response.status_code == 404 and "root:" not in response.text


def test_page_static_files_and_openapi_are_served(base_url):
    page = get(base_url, "/")
    assert page.status_code == 200 and 'id="search-form"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert get(base_url, "/static/app.js").status_code == 200
    schema = get(base_url, "/openapi.json").json()
    assert {"/api/search", "/api/attention", "/api/images/{image_id}", "/healthz"} <= set(schema["paths"])
    k = next(p for p in schema["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 1000 and k["schema"]["minimum"] == 1


def test_api_docs_come_from_the_app_itself(base_url):
    """/docs names only this server's own files (no CDN), and they are served: the docs work offline."""
    docs = get(base_url, "/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs.text) + re.findall(r"""url: ?['"]([^'"]+)['"]""",
                                                                                        docs.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        assert get(base_url, source).status_code == 200, source
    assert "SwaggerUIBundle" in get(base_url, "/docs-assets/swagger-ui-bundle.js").text


def session_of_requests(url: str) -> list[int]:
    paths = [("/healthz", {}), ("/", {}), ("/api/search", {"text": QUERY}), ("/api/search", {"image": TARGET}),
             ("/api/attention", {"image": TARGET, "text": QUERY}), (f"/api/images/{TARGET}", {}),
             ("/api/images/..%2Fsecret.txt", {}), ("/api/search", {"text": QUERY, "mode": "exact"})]
    return [get(url, path, **params).status_code for path, params in paths]


def test_a_session_writes_nothing_into_the_store_or_workspace(service):
    before = tree_state(service.root)
    with running(service.files) as url:
        statuses = session_of_requests(url)
    assert statuses.count(200) == 7 and statuses[6] == 404
    assert tree_state(service.root) == before


def test_without_a_saved_index_it_searches_in_memory_and_builds_nothing(tmp_path):
    files = build_service_files(tmp_path, with_index=False)
    files = type(files)(files.checkpoint, files.store, files.vocab, None, files.images_root)
    before = tree_state(tmp_path)
    with running(files) as url:
        assert "encoded in memory" in get(url, "/healthz").json()["index"]
        hits = get(url, "/api/search", text=QUERY, k=3).json()["hits"]
        refused = get(url, "/api/search", image=TARGET)
        statuses = session_of_requests(url)
    assert hits[0]["image_id"] == TARGET
    assert refused.status_code == 409 and "--captions" in refused.json()["error"]
    assert 500 not in statuses
    assert tree_state(tmp_path) == before and not (tmp_path / "store.search").exists()


@pytest.mark.parametrize("mode", ["exact", "two-stage", "global"])
@pytest.mark.parametrize("text", ["!!!", "zebra quantum", "日本語のキャプション", "<pad> <end>"])
def test_odd_text_and_k_beyond_the_gallery_are_answered(base_url, mode, text):
    response = get(base_url, "/api/search", text=text, k=1000, mode=mode)
    assert response.status_code == 200, response.text
    assert sorted(hit["image_id"] for hit in response.json()["hits"]) == sorted([f"img{i:02d}" for i in range(12)]
                                                                              + [ESCAPING])
    assert get(base_url, "/api/attention", image=TARGET, text=text).status_code == 200
    assert get(base_url, "/api/search", image=TARGET, k=1000, mode=mode).json()["hits"][-1]["rank"] == 4
