"""Every bad input of issue 5 against the real server: the right 4xx JSON error, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib

import pytest

from server.conftest import LiveServer, jpeg_bytes, make_image, png_bytes, serve_cli


def png_bomb(side: int = 20000) -> bytes:
    """A real, valid side x side 1-bit PNG of zeros (~50 KB compressed, 400 Mpixel declared)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raw_http(server, head: str, body_chunks, read_timeout: float = 10.0) -> tuple[int, dict]:
    """Send a hand-made request (to control Content-Length and chunking) and parse the response."""
    sock = socket.create_connection((server.host, server.port), timeout=read_timeout)
    try:
        sock.sendall(head.encode())
        try:
            for piece in body_chunks:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: what we want; its answer is already on the way
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            data += more
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1])
    body = data.split(b"\r\n\r\n", 1)[1]
    body = body[: _length(data)]
    return status, json.loads(body) if body.startswith(b"{") else {"text": body.decode(errors="replace")}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def assert_error(response, status: int, code: str, *, contains: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if contains:
        assert contains in error["message"]


@pytest.fixture(autouse=True)
def still_serving(client, colour_pngs):
    """After each bad request, a valid one still succeeds."""
    yield
    response = client.post("/v1/predict", files={"file": ("ok.png", colour_pngs["red"], "image/png")})
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "red"


def test_empty_body(client):
    assert_error(client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "empty")
    assert_error(
        client.post("/v1/predict", files={"file": ("e.png", b"", "image/png")}),
        400,
        "empty",
        contains="e.png",
    )


def test_non_image_with_image_content_type(client):
    html = b"<html><script>alert(1)</script></html>"
    assert_error(
        client.post("/v1/predict", content=html, headers={"Content-Type": "image/png"}),
        415,
        "unsupported_format",
    )
    response = client.post("/v1/predict", files={"file": ("x.jpg", b"%PDF-1.7 not an image", "image/jpeg")})
    assert_error(response, 415, "unsupported_format", contains="x.jpg")


@pytest.mark.parametrize("encode", [png_bytes, jpeg_bytes], ids=["png", "jpeg"])
def test_truncated_image(client, encode):
    import numpy as np

    data = encode(make_image((200, 40, 40), np.random.default_rng(0), size=64))
    response = client.post("/v1/predict", content=data[: len(data) // 2])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("truncated", "corrupt")


def test_png_bomb_refused_quickly(client):
    bomb = png_bomb()
    assert len(bomb) < 200_000
    start = time.perf_counter()
    response = client.post("/v1/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert time.perf_counter() - start < 2.0
    assert_error(response, 413, "image_too_large", contains="20000x20000")


def test_50mb_upload_honest_content_length(server):
    size = 50 * 2**20
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n"
    )
    start = time.perf_counter()
    status, body = raw_http(
        server, head, [b"\x89PNG\r\n\x1a\n" + b"\0" * 65536]
    )  # refused before the rest is sent
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert time.perf_counter() - start < 5


def test_50mb_upload_chunked_without_content_length(server):
    head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"\0" * 2**20
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(50))
    status, body = raw_http(server, head, chunks)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_understated_content_length_is_counted(classifier):
    """ASGI level: a body longer than its Content-Length header is still cut at the limit."""
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    app = create_app(classifier, ServeSettings(max_upload_mb=1))
    transport = httpx.ASGITransport(app=app)

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/v1/predict", content=b"\0" * (3 * 2**20), headers={"content-length": "10"})

    import asyncio

    assert_error(asyncio.run(go()), 413, "payload_too_large")


def test_negative_content_length(server):
    head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    status, _ = raw_http(server, head, [])
    assert status == 400  # refused by uvicorn's HTTP parser before the app sees it


def test_wrong_field_name(client, colour_pngs):
    response = client.post("/v1/predict", files={"image": ("a.png", colour_pngs["red"], "image/png")})
    assert_error(response, 400, "missing_file", contains="'image'")


def test_too_many_files(client, colour_pngs):
    files = [("file", (f"{i}.png", colour_pngs["red"], "image/png")) for i in range(5)]  # server allows 4
    assert_error(client.post("/v1/predict", files=files), 400, "too_many_files", contains="at most 4")


def test_malformed_multipart(client):
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    response = client.post("/v1/predict", content=b"--xyz\r\nnot a header line\r\n\r\n", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] in (
        "bad_multipart",
        "missing_file",
    )
    response = client.post("/v1/predict", content=b"abc", headers={"Content-Type": "multipart/form-data"})
    assert_error(response, 400, "bad_multipart")


def test_malformed_v2_json(client):
    url = "/v2/models/{}/infer".format(client.get("/v1/model").json()["name"])
    assert_error(client.post(url, content=b"{not json"), 400, "bad_request", contains="JSON")
    assert_error(client.post(url, json={"inputs": []}), 400, "bad_request")
    assert_error(
        client.post(url, json={"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [5]}]}),
        400,
        "bad_request",
    )
    bad_shape = {"inputs": [{"name": "p", "shape": [1, 8, 8, 3], "datatype": "FP32", "data": [0.0] * 192}]}
    assert_error(client.post(url, json=bad_shape), 400, "bad_request", contains="does not match")
    nan = {"inputs": [{"name": "p", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [1e9] * 3072}]}
    assert_error(client.post(url, json=nan), 400, "bad_request", contains="0..255")


def test_unknown_model_name(client):
    assert_error(client.post("/v2/models/nope/infer", json={"inputs": []}), 404, "model_not_found")
    assert_error(client.get("/v2/models/nope"), 404, "model_not_found")
    assert_error(client.get("/v2/models/nope/ready"), 404, "model_not_found")


def test_api_key(classifier, colour_pngs):
    import httpx

    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    key = "s3cret-key-0123456789"
    with (
        LiveServer(create_app(classifier, ServeSettings(api_key=key))) as live,
        httpx.Client(base_url=live.url) as c,
    ):
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"X-API-Key": key[:-1] + "X"},
            {"Authorization": "Bearer nope"},
        ):
            assert_error(
                c.post("/v1/predict", content=colour_pngs["red"], headers=headers), 401, "unauthorized"
            )
        for path in ("/docs", "/openapi.json", "/metrics", "/v1/model", "/v2/models/x"):
            assert c.get(path).status_code == 401, path
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/v2/health/live"):
            assert c.get(path).status_code == 200, path
        ok = c.post("/v1/predict", content=colour_pngs["red"], headers={"X-API-Key": key})
        assert ok.status_code == 200
        assert c.get("/docs", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_api_key_from_the_environment(trained_run, colour_pngs, monkeypatch):
    """``imagerec serve`` without --api-key reads IMAGEREC_API_KEY: 401 JSON without the key, 200 with it."""
    import httpx

    key = "env-k3y-0123456789"
    monkeypatch.setenv("IMAGEREC_API_KEY", key)

    def check(live) -> None:
        assert live.app.service.settings.api_key == key
        with httpx.Client(base_url=live.url, timeout=30) as c:
            assert_error(c.post("/v1/predict", content=colour_pngs["red"]), 401, "unauthorized")
            wrong = c.post("/v1/predict", content=colour_pngs["red"], headers={"X-API-Key": "nope"})
            assert_error(wrong, 401, "unauthorized")
            ok = c.post("/v1/predict", content=colour_pngs["red"], headers={"X-API-Key": key})
            assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "red"

    serve_cli(monkeypatch, [str(trained_run), "--decode-workers", "0"], check)


def test_default_upload_limit_is_10_mb(trained_run, monkeypatch):
    """``imagerec serve`` with no --max-upload-mb: a body one byte over 10 MB gets 413 JSON; one at the limit
    is read (and refused for what it is, not for its size)."""
    limit = 10 * 2**20

    def check(live) -> None:
        assert live.app.service.settings.max_body == limit
        head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n"
        status, body = raw_http(live, head.format(limit + 1), [b"\x89PNG\r\n\x1a\n" + b"\0" * (limit - 7)])
        assert status == 413 and body["error"]["code"] == "payload_too_large", body
        assert f"limit of {limit} bytes" in body["error"]["message"]
        status, body = raw_http(live, head.format(limit), [b"\x89PNG\r\n\x1a\n" + b"\0" * (limit - 8)])
        assert status in (400, 415) and body["error"]["code"] != "payload_too_large", body

    serve_cli(monkeypatch, [str(trained_run), "--decode-workers", "0"], check)


def test_cors_off_by_default_and_allow_list(classifier, client):
    import httpx

    from imagerec.errors import ImagerecError
    from imagerec.server.app import create_app
    from imagerec.settings import ServeSettings

    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    app = create_app(classifier, ServeSettings(cors_origins=("https://ok.example",)))
    with LiveServer(app) as live, httpx.Client(base_url=live.url) as c:
        assert "access-control-allow-origin" not in c.options("/v1/predict", headers=preflight).headers
        good = c.options("/v1/predict", headers={**preflight, "Origin": "https://ok.example"})
        assert good.headers["access-control-allow-origin"] == "https://ok.example"
    with pytest.raises(ImagerecError, match="cannot be combined"):
        create_app(classifier, ServeSettings(cors_origins=("*",), cors_credentials=True))


def test_stall_flags_reach_the_batcher_and_bad_values_are_one_line(trained_run, monkeypatch, capsys):
    from imagerec.cli import main

    def check(live) -> None:
        batcher = live.app.service.batcher
        assert (batcher.stall_s, batcher.max_stalled) == (3.0, 2)

    serve_cli(
        monkeypatch,
        [str(trained_run), "--decode-workers", "0", "--stall-s", "3", "--max-stalled", "2"],
        check,
    )
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(trained_run), "--max-stalled", "0"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imagerec: error:") and "--max-stalled must be >= 1, got 0" in err[-1], err
