"""The server: its API answers what ``predict`` answers, every bad upload gets a 4xx JSON error and the
server keeps serving (the generated corpus, limits, fuzzed bytes), requests arriving together share a
forward pass, a real ``imgclf serve`` answers over loopback, and its page works in headless Chromium."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bad_images import UNUSABLE, USABLE
from conftest import CHROMIUM, CHROMIUM_FLAGS
from imgclf.predict import load
from imgclf.serve import ServeSettings
from imgclf.serve.app import create_app


def png(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def uploads(*named: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app(load(trained_run, device="cpu"), ServeSettings(max_images=4))) as test_client:
        yield test_client


def test_predict_answers_each_image_in_order_as_the_python_api_does(client, trained_run, tmp_path):
    images = {f"img{i}.png": png(i) for i in range(3)}
    answer = client.post("/predict", files=uploads(*images.items()), params={"top_k": 2})
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    expected = load(trained_run).predict([tmp_path / name for name in images], top_k=2)
    assert [p["file"] for p in predictions] == list(images)
    assert [p["label"] for p in predictions] == [e.label for e in expected]
    for got, want in zip(predictions, expected):
        assert [c["label"] for c in got["top_k"]] == [label for label, _ in want.top_k]
        assert got["probability"] == pytest.approx(want.probability, abs=1e-6)


def test_health_model_and_the_openapi_schema(client, trained_run):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["classes"] == ["checker", "horizontal", "vertical"]
    assert info["image_size"] == 16 and info["channels"] in (1, 3)
    assert 0 <= info["test_metrics"]["accuracy"] <= 1
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/explain", "/health", "/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    # the schema says what the server takes: at least one file (an empty list is refused, as documented)
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    files = schema["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]["files"]
    assert files["minItems"] == 1 and "none empty" in files["description"]
    # and a client does not learn where the run lies on this machine
    assert info["checkpoint"] == f"{trained_run.name}/best.pt"


def test_every_bad_upload_of_the_corpus_gets_a_4xx_naming_it_then_a_good_one_is_answered(client):
    for name, data in UNUSABLE.items():
        answer = client.post("/predict", files=uploads((name, data)))
        assert 400 <= answer.status_code < 500, (name, answer.status_code)
        body = answer.json()
        assert body["error"].startswith(name) or body["file"] == name, body
    for name, data in USABLE.items():
        assert client.post("/predict", files=uploads((name, data))).status_code == 200, name
    assert client.post("/predict", files=uploads(("good.png", png()))).status_code == 200


def test_the_bomb_is_refused_from_its_header(client):
    answer = client.post("/predict", files=uploads(("bomb.png", UNUSABLE["bomb.png"])))
    assert answer.status_code == 422
    assert "claims 60000x60000 = 3,600,000,000 pixels" in answer.json()["error"]


def test_limits_answer_413_with_json(trained_run):
    limits = ServeSettings(max_upload_bytes=50_000, max_images=2)
    with TestClient(create_app(load(trained_run, device="cpu"), limits)) as small:
        too_big = small.post("/predict", files=uploads(("big.png", png(size=200))))
        assert too_big.status_code == 413 and "limit of 50,000 bytes" in too_big.json()["error"]
        many = small.post("/predict", files=uploads(*[(f"{i}.png", png(i)) for i in range(3)]))
        assert many.status_code == 413 and "3 images in one request, over the limit of 2" in many.json()["error"]

        def chunks():  # no Content-Length: the limit must hold while the body streams in
            for _ in range(40):
                yield b"x" * 2000

        streamed = small.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413
        missing = small.post("/predict")  # no file at all
        assert missing.status_code == 422 and missing.json()["error"].startswith("files: Field required; send images")
        assert small.post("/predict", files=uploads(("ok.png", png()))).status_code == 200


def test_explain_answers_what_predict_answers_and_a_wrong_field_names_its_own(client):
    explained = client.post("/explain", files=[("file", ("x.png", png(3), "image/png"))])
    predicted = client.post("/predict", files=uploads(("x.png", png(3))))
    assert explained.status_code == predicted.status_code == 200
    assert explained.json()["probability"] == pytest.approx(predicted.json()["predictions"][0]["probability"], abs=1e-6)
    wrong = client.post("/explain", files=[("image", ("x.png", png(3), "image/png"))])
    assert wrong.status_code == 422 and wrong.json()["error"] == (
        "file: Field required; send images as multipart form data: file=@IMAGE"
    )


def test_a_wrong_method_answers_405_with_the_allowed_ones(client):
    answer = client.get("/predict")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert answer.json()["error"] == "Method Not Allowed"


def test_the_api_docs_work_offline(client):
    for path, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        page = client.get(path)
        assert page.status_code == 200 and "/openapi.json" in page.text
        assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text, path
        for asset in assets:
            assert f"/docs-assets/{asset}" in page.text
            served = client.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 100_000, asset
    # FastAPI describes the API in OpenAPI 3.1: the bundled Swagger UI must be a 5.x to read it
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert b"swagger-ui" in client.get("/docs-assets/swagger-ui-bundle.js").content[:300_000]


def test_a_busy_port_is_one_line_before_serving(trained_run, capsys):
    from imgclf.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    printed = capsys.readouterr()
    assert "serving" not in printed.out
    assert printed.err.strip() == f"imgclf: error: --port {port}: already in use on 127.0.0.1; choose another --port"


def test_requests_arriving_together_share_forward_passes(trained_run):
    with TestClient(create_app(load(trained_run, device="cpu"), ServeSettings(max_wait_ms=50))) as batched:
        batcher = batched.app.state.batcher
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: batched.post("/predict", files=uploads((f"{i}.png", png(i)))), range(16)))
        assert [a.status_code for a in answers] == [200] * 16
        assert batcher.images == 16
        assert batcher.batches < 16  # at least two requests went through one forward pass


def mutated_png(data: bytes, positions: list[int], values: list[int]) -> bytes:
    mutable = bytearray(data)
    for position, value in zip(positions, values):
        mutable[position % len(mutable)] = value
    return bytes(mutable)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=3000),
        st.builds(
            mutated_png,
            st.just(png(7, size=24)),
            st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
            st.lists(st.integers(0, 255), min_size=8, max_size=8),
        ),
    )
)
def test_fuzzed_uploads_never_get_a_5xx(client, data):
    answer = client.post("/predict", files=uploads(("fuzz.png", data)))
    assert answer.status_code in (200, 422), answer.text
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------- a real server on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``imgclf serve RUN FLAGS`` on a free loopback port, its URL once /health answers."""
    with listening(["serve", str(run), *flags], "/health") as started:
        yield started


@contextlib.contextmanager
def listening(arguments: list[str], ready: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``imgclf ARGUMENTS --port PORT`` (serve, studio) on a free loopback port, its URL once ``ready``
    answers."""
    port = free_port()
    imgclf = Path(sys.executable).parent / "imgclf"
    process = subprocess.Popen(
        [imgclf, *arguments, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"imgclf {arguments[0]} did not start: {process.communicate()[0].decode()[-2000:]}")
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(trained_run):
    with serving(trained_run) as (url, _):
        yield url


def test_imgclf_serve_answers_over_http(server):
    answer = httpx.post(server + "/predict", files=uploads(("a.png", png(1)), ("b.png", png(2))), timeout=30)
    assert answer.status_code == 200
    assert [p["file"] for p in answer.json()["predictions"]] == ["a.png", "b.png"]
    bad = httpx.post(server + "/predict", files=uploads(("bomb.png", UNUSABLE["bomb.png"])), timeout=30)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    page = httpx.get(server + "/", timeout=30).text
    assert "<script>" in page and "http://" not in page and "https://" not in page  # offline: no external assets


def raw_connection(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A socket to the server from loopback address ``source`` (127.0.0.2 is another client on the same machine)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60, source_address=(source, 0))
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return received


def test_slow_and_idle_clients_are_cut_off_and_one_client_cannot_fill_the_server(trained_run):
    """Unfinished headers and uploads get 408 and lose their socket; connections over one address's cap get 503
    at once, while another client is still answered; the refusals are lines in the server's log."""
    flags = ["--header-timeout", "1", "--body-timeout", "1.5", "--max-connections-per-client", "8"]
    flags += ["--backend", "torchscript"]  # and the forward pass on an exported format's runtime
    with serving(trained_run, *flags) as (url, process):
        assert httpx.get(url + "/model", timeout=30).json()["backend"] == "torchscript"
        answer = httpx.post(url + "/predict", files=uploads(("a.png", png(1))), timeout=30).json()["predictions"]
        expected = load(trained_run, device="cpu").predict([Image.open(io.BytesIO(png(1)))], top_k=5)[0]
        assert answer[0]["label"] == expected.label and abs(answer[0]["probability"] - expected.probability) < 1e-4
        partial_headers = raw_connection(url)
        partial_headers.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        partial_upload = raw_connection(url)
        partial_upload.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 5000\r\n\r\n--b\r\n"
        )
        idle = [raw_connection(url) for _ in range(6)]  # with the two above: this address's 8
        over = [answer_of(raw_connection(url)) for _ in range(20)]
        assert all(answer.startswith(b"HTTP/1.1 503") and b"127.0.0.1" in answer for answer in over)
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other_client:
            assert other_client.get(url + "/health", timeout=30).status_code == 200
        assert answer_of(partial_headers).startswith(b"HTTP/1.1 408")
        assert b"body did not arrive" in answer_of(partial_upload)
        assert all(answer_of(sock).startswith(b"HTTP/1.1 408") for sock in idle)  # no byte sent: cut off too
        assert httpx.get(url + "/health", timeout=30).status_code == 200  # the address's slots are free again
        process.terminate()
        log = process.communicate(timeout=20)[0].decode()
    assert log.count(" - 503: over 8 open connections from 127.0.0.1") == 20
    assert "408: the request's headers did not arrive within 1 s" in log
    assert '"GET /health HTTP/1.1" 200' in log  # each answered request is a line


def test_the_page_classifies_an_uploaded_image_in_chromium(server, tmp_path):
    if CHROMIUM is None:
        assert not os.environ.get("IMGCLF_REQUIRE_CHROMIUM"), "CI must install Chromium (see .ci/run)"
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    image = tmp_path / "stripes.png"
    image.write_bytes(png(5, size=64))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
        page.goto(server + "/")
        page.keyboard.press("Tab")  # the file picker is the first stop from the keyboard
        assert page.evaluate("document.activeElement.id") == "file"
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#bars li", timeout=30_000)
        assert page.locator("#bars li").count() == 3  # every class of the 3-class model
        assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error")
        assert "notes.png" in page.text_content("#status")
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_api_docs_render_in_chromium_with_no_network(server):
    """Swagger UI (which must read FastAPI's OpenAPI 3.1) lists the endpoints; every request stays on loopback."""
    if CHROMIUM is None:
        assert not os.environ.get("IMGCLF_REQUIRE_CHROMIUM"), "CI must install Chromium (see .ci/run)"
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:])
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(server + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        browser.close()
    assert {"/predict", "/explain", "/health", "/model"} <= {p.strip() for p in paths}
    assert requested and all(url.startswith(server) for url in requested), requested
