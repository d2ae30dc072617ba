"""The service contract (docs/api.md): schemathesis over the OpenAPI document, a client generated
from it, keys and quotas, the Python client and `detect --server`, and the docs' examples."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import SERVER_KEY, in_process
from miragedet.apps.server import ServerSettings, create_app
from miragedet.inference.detector import Detector

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.effect_noise((60 + 13 * i, 48), 20 + 9 * i).convert("RGB").save(folder / f"{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return folder


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name} ([0-9.e+]+)$", text, re.M))


def test_schemathesis_finds_nothing_over_the_whole_api(server, tmp_path):
    """All checks, all phases, seeded and bounded; the hooks make real images, so schema-valid
    uploads must be scored (200) and the rest refused with a documented status, never a 5xx."""
    scored = 'miragedet_images_total{outcome="scored"}'
    before = _metric(httpx.get(f"{server}/metrics").text, re.escape(scored))
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": str(ROOT / "tests"),
        "NO_COLOR": "1",
    }
    run = subprocess.run(
        [
            shutil.which("schemathesis") or "schemathesis",
            "run",
            f"{server}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"X-API-Key: {SERVER_KEY}",
            "--seed",
            "1",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--suppress-health-check",
            "too_slow",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # its cache folder (.schemathesis/) goes here, not into the checkout
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
    for operation in ("Examples", "Coverage", "Fuzzing"):
        assert f"✅ {operation}" in run.stdout
    after = _metric(httpx.get(f"{server}/metrics").text, re.escape(scored))
    assert after - before >= 25  # the fuzzer's images reached the model


def _test_tool(name: str) -> Path:
    """A test-only tool from its own environment (scripts/setup-tests.sh makes .test-tools/)."""
    path = ROOT / ".test-tools" / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash scripts/setup-tests.sh` (README's test command)")
    return path


def test_a_client_generated_from_the_document_uploads_an_image(server, tmp_path):
    """openapi-python-client generates a client from the served document; the client runs in the
    tool's own environment (httpx and attrs from there, not ours) and scores an upload."""
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(f"{server}/openapi.json").text)
    subprocess.run(
        [
            _test_tool("openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(tmp_path / "mdclient"),
            "--meta",
            "none",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    image = tmp_path / "n.png"
    Image.effect_noise((40, 30), 30).convert("RGB").save(image)
    code = """
import io, sys
from mdclient import AuthenticatedClient
from mdclient.api.default import detect, model_info
from mdclient.models import DetectFilesBody, DetectJSON, Base64Image, DetectResponse, Error
from mdclient.types import File
with open(sys.argv[3], "rb") as f:
    png = f.read()
client = AuthenticatedClient(base_url=sys.argv[1], token=sys.argv[2])
part = File(payload=io.BytesIO(png), file_name="n.png", mime_type="image/png")
r = detect.sync_detailed(client=client, body=DetectFilesBody(files=[part]), threshold=0.3)
assert r.status_code == 200 and isinstance(r.parsed, DetectResponse), r.content
assert r.parsed.results[0].threshold == 0.3
bad = detect.sync_detailed(client=client, body=DetectJSON(images=[Base64Image(data="bm9wZQ==")]))
assert bad.status_code == 415 and isinstance(bad.parsed, Error), bad.content
print(bad.parsed.code, r.parsed.results[0].fake_prob)
"""
    out = subprocess.run(
        [_test_tool("python"), "-c", code, server, SERVER_KEY, str(image)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    code_name, fake = out.stdout.split()
    assert code_name == "ErrorCode.UNSUPPORTED_FORMAT" or code_name == "unsupported_format"
    assert 0 <= float(fake) <= 1


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((32, 32), 10 + seed).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def test_keys_by_name_reload_on_sighup_and_quotas(served_checkpoint, tmp_path, monkeypatch, caplog):
    import miragedet.apps.server.keys as keys_module
    from miragedet.apps.server.app import reload_on_hangup

    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# name key rate daily\nalice  key-a  -  3\nbob    key-b  2/hour\n")
    detector = Detector.from_pretrained(served_checkpoint)
    app = create_app(ServerSettings(api_keys_file=str(keys_file)), load_detector=lambda: detector)
    compared = []
    real_compare = keys_module.hmac.compare_digest
    monkeypatch.setattr(
        keys_module.hmac,
        "compare_digest",
        lambda a, b: compared.append((a, b)) or real_compare(a, b),
    )

    def post(client, key, n=1):
        files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(n)]
        return client.post("/v1/detect", files=files, headers={"X-API-Key": key})

    async def scenario():
        async with in_process(app) as client:
            wrong, by_name = await post(client, "nope"), await post(client, "alice")
            alice = await post(client, "key-a", 2)
            bearer = await client.post(
                "/v1/detect",
                files={"files": ("a.png", _png())},
                headers={"Authorization": "Bearer key-a"},
            )
            over = await post(client, "key-a")  # the daily quota of 3 images is spent
            bob = [await post(client, "key-b") for _ in range(3)]  # 2 requests an hour
            keys_file.write_text("alice key-a - 3\n")  # bob revoked
            previous = reload_on_hangup(app)
            try:
                signal.raise_signal(signal.SIGHUP)
            finally:
                signal.signal(signal.SIGHUP, previous)
            revoked = await post(client, "key-b")
            metrics = (await client.get("/metrics")).text
            return wrong, by_name, alice, bearer, over, bob, revoked, metrics

    with caplog.at_level(logging.INFO, logger="miragedet.access"):
        wrong, by_name, alice, bearer, over, bob, revoked, metrics = asyncio.run(scenario())
    for refused in (wrong, by_name, revoked):
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert alice.status_code == 200 and len(alice.json()["results"]) == 2
    assert bearer.status_code == 200
    assert over.status_code == 429 and over.json()["code"] == "quota_exceeded"
    assert 0 < int(over.headers["retry-after"]) <= 86400
    assert [r.status_code for r in bob] == [200, 200, 429]
    assert bob[2].json()["code"] == "rate_limited" and int(bob[2].headers["retry-after"]) > 0
    # every key's digest was compared for each key given (no early exit), never the key itself
    assert compared and all(len(a) == len(b) == 32 for a, b in compared)
    assert b"key-a" not in {a for a, _ in compared}
    assert 'miragedet_key_images_total{key="alice"} 3.0' in metrics
    assert 'miragedet_key_refused_total{key="alice",reason="quota_exceeded"} 1.0' in metrics
    assert 'miragedet_key_refused_total{key="bob",reason="rate_limited"} 1.0' in metrics
    log = "\n".join(r.getMessage() for r in caplog.records if r.name == "miragedet.access")
    assert "key=alice" in log and "key=bob" in log and "key-a" not in log and "key-b" not in log


def test_the_client_retries_after_the_servers_retry_after():
    from miragedet.inference.remote import Client

    calls = []
    info = {
        "id": "m@1",
        "classes": ["Real", "Fake"],
        "threshold": 0.5,
        "limits": {"max_images": 2, "max_body_mb": 1},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=info)
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(
                503,
                json={"detail": "loading", "code": "model_loading"},
                headers={"Retry-After": "0"},
            )
        n = request.content.count(b'name="files"')
        rows = [
            {
                "name": str(i),
                "status": 200,
                "fake_prob": 0.9,
                "label": "fake",
                "threshold": 0.5,
                "top_class": "Fake",
                "probs": {"Real": 0.1, "Fake": 0.9},
                "model_id": "m@1",
            }
            for i in range(n)
        ]
        return httpx.Response(200, json={"results": rows})

    client = Client("http://x", api_key="k", transport=httpx.MockTransport(handler), retries=3)
    image = Image.new("RGB", (8, 8))
    predictions = client.detect([_png(), image, _png(1), Path("/nonexistent.png")])
    assert len(calls) == 3  # one 503 retried, then two batches of the server's 2 images
    assert [p.fake_prob for p in predictions[:3]] == [0.9] * 3
    assert predictions[3].error.startswith("cannot read /nonexistent.png")
    assert calls[0].headers["x-api-key"] == "k"


def test_detect_server_equals_local_detect(server, served_checkpoint, tmp_path):
    folder = _images(tmp_path / "in")
    env = {**os.environ, "MIRAGEDET_API_KEY": SERVER_KEY}
    outputs = {}
    sources = (("local", ["-m", str(served_checkpoint)]), ("remote", ["--server", server]))
    for where, args in sources:
        for extra in ([], ["--view", "tiles", "--max-tiles", "4", "--stability"]):
            out = tmp_path / f"{where}{len(extra)}.jsonl"
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "miragedet",
                    "detect",
                    str(folder),
                    *args,
                    *extra,
                    "-f",
                    "jsonl",
                    "-o",
                    str(out),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            assert run.returncode == 1, run.stderr  # one broken file: exit 1, the rest scored
            outputs[where, len(extra)] = [json.loads(line) for line in out.read_text().splitlines()]
    for extra in (0, 5):
        local, remote = outputs["local", extra], outputs["remote", extra]
        assert [r["path"] for r in local] == [r["path"] for r in remote] and len(local) == 5
        for a, b in zip(local, remote, strict=True):
            assert set(a) == set(b)
            for key in a:
                if isinstance(a[key], float):
                    assert b[key] == pytest.approx(a[key], abs=1e-6), key
                elif key != "regions":
                    assert a[key] == b[key], key
            if a.get("regions"):
                np.testing.assert_allclose(
                    [r["p"] for r in a["regions"]], [r["p"] for r in b["regions"]], atol=1e-6
                )


def test_the_docs_examples_run(server, tmp_path):
    """docs/api.md's curl, Python client and JavaScript fetch examples, as written."""
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```(sh|python|js)\n(.*?)```", text, re.S)
    assert [lang for lang, _ in blocks] == ["sh", "python", "js"]
    Image.effect_noise((64, 48), 30).convert("RGB").save(tmp_path / "photo.jpg")
    env = {**os.environ, "MIRAGEDET_URL": server, "MIRAGEDET_API_KEY": SERVER_KEY}
    for lang, code in blocks:
        if lang == "js":
            node = shutil.which("node")
            if node is None:
                pytest.skip("node is not installed (the JavaScript example)")
            script = tmp_path / "example.js"  # top-level await inside an async function
            script.write_text(
                f"(async () => {{\n{code}\n}})().catch((e) => {{ console.error(e); "
                "process.exit(1); });\n"
            )
            command = [node, str(script)]
        else:
            command = ["bash", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
        run = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, (lang, run.stderr[-2000:])
        if lang == "sh":
            assert json.loads(run.stdout)["results"][0]["tiles"]["count"] >= 1
        elif lang == "python":
            fake, label, _verdict = run.stdout.split()
            assert 0 <= float(fake) <= 1 and label in ("real", "fake")
        else:
            status, fake, label = run.stdout.split()
            assert status == "200" and 0 <= float(fake) <= 1
