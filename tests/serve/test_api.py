"""The A1111-compatible API through FastAPI's test client, on the shipped model at 64 px and 2 steps."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shanshui.serve import limits
from shanshui.serve.app import Settings, create_app
from shanshui.serve.painter import Job
from tests.serve.conftest import TINY, GatedPipe

PROMPT = "一棵青松，青山环绕，云雾缭绕"


@pytest.fixture(scope="module")
def client(shipped_pipe):
    app = create_app(shipped_pipe)
    with TestClient(app) as c:
        yield c
    app.state.painter.close()


def png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert im.format == "PNG"
    im.load()
    return im


def test_txt2img_answers_like_a1111(client, shipped_pipe):
    body = {"prompt": PROMPT, "negative_prompt": "blurry", **TINY, "seed": 7, "batch_size": 2, "n_iter": 2,
            "cfg_scale": 5, "sampler_name": "Euler a", "restore_faces": False, "enable_hr": False, "scripts": {}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"images", "parameters", "info"}
    assert len(out["images"]) == 4
    assert out["parameters"]["prompt"] == PROMPT and out["parameters"]["batch_size"] == 2
    assert "restore_faces" not in out["parameters"]  # unknown fields are accepted and ignored
    info = json.loads(out["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8, 9, 10]
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 5 and info["steps"] == 2
    assert (info["width"], info["height"]) == (64, 64) and len(info["infotexts"]) == 4
    im = png(out["images"][1])
    assert im.size == (64, 64) and im.mode == "RGB"
    text = im.info["parameters"]
    assert text.startswith(PROMPT) and "Negative prompt: blurry" in text and "Seed: 8" in text and "Sampler: Euler a" in text
    assert json.loads(im.info["shanshui"])["seed"] == 8
    assert info["infotexts"][1] == text
    # image 1 of the batch is the picture seed 8 paints on its own: every seed in all_seeds reproduces its image
    alone = client.post("/sdapi/v1/txt2img", json={**body, "seed": 8, "batch_size": 1, "n_iter": 1}).json()
    assert np.array_equal(np.asarray(png(alone["images"][0])), np.asarray(im))
    assert str(shipped_pipe.root) not in r.text  # no file paths in responses


def test_random_seed_is_reported(client):
    out = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY, "seed": -1}).json()
    seed = json.loads(out["info"])["seed"]
    assert 0 <= seed <= limits.MAX_SEED
    assert f"Seed: {seed}," in png(out["images"][0]).info["parameters"]


@pytest.mark.parametrize("name,key", [("DPM++ 2M", "DPM++ 2M"), ("Euler", "Euler"), ("DDIM", "DDIM"),
                                      ("k_euler_a", "Euler a"), ("dpmpp_2m", "DPM++ 2M")])
def test_sampler_names(client, name, key):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY, "seed": 1, "sampler_name": name})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["sampler_name"] == key


@pytest.mark.parametrize("change,message", [
    ({"steps": 0}, "steps must be between 1 and 1000"),
    ({"width": 72}, "width 72 must be a multiple of 32"),
    ({"height": 2048}, "height: Input should be less than or equal to 1024"),
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": "山" * (limits.MAX_PROMPT_CHARS + 1)}, "prompt: String should have at most 2000 characters"),
    ({"batch_size": 8, "n_iter": 4}, "at most 16 images per request"),
    ({"cfg_scale": 100}, "guidance must be between 0 and 50"),
    ({"seed": -5}, "seed: Input should be greater than or equal to -1"),
    ({"steps": "many"}, "steps: Input should be a valid integer"),
    ({"sampler_name": "LMS"}, "unknown sampler_name 'LMS'; choose one of DDIM, Euler, Euler a, DPM++ 2M"),
])
def test_bad_input_is_422_with_a_clear_message(client, change, message):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY, **change})
    assert r.status_code == 422
    assert message in r.json()["detail"], r.json()


def test_info_endpoints(client, shipped_pipe):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == ["DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "Euler Karras"]
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"] == "shanshui-default" and "/" not in models[0]["filename"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "shanshui-default"
    ok = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "shanshui-default", "CLIP_stop_at_last_layers": 2})
    assert ok.status_code == 200 and ok.json() is None
    other = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert other.status_code == 422 and "only shanshui-default is loaded" in other.json()["detail"]
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["textinfo"] == "idle"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_queue"] == limits.DEFAULT_MAX_QUEUE
    schema = client.get("/openapi.json").json()
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress", "/sdapi/v1/interrupt",
                 "/sdapi/v1/samplers", "/sdapi/v1/sd-models", "/sdapi/v1/options", "/health"):
        assert path in schema["paths"], path
    config = client.get("/api/config").json()
    shapes = {p["key"]: (p["width"], p["height"]) for p in config["presets"]}
    assert shapes["tall"] == (192, 384) and shapes["wide"] == (384, 192)
    assert config["img2img"] is True  # the shipped export carries its VAE encoder: image-to-image without torch
    page = client.get("/")
    assert page.status_code == 200 and "/static/page.js" in page.text and "https://" not in page.text
    for text in (json.dumps(samplers), json.dumps(models), json.dumps(config), json.dumps(health)):
        assert str(shipped_pipe.root) not in text


def test_metrics_count_images_and_rejections(client):
    client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY})
    client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": -1})
    text = client.get("/metrics").text

    def value(name):
        line = next(l for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    assert value("shanshui_serve_images_total") >= 1
    assert value('shanshui_serve_rejections_total{reason="invalid"}') >= 1
    assert value('shanshui_serve_request_seconds_count{endpoint="txt2img"}') >= 1
    assert value("shanshui_serve_queue_length") == 0
    assert value("process_resident_memory_bytes") > 1e6


def test_full_queue_answers_429_with_retry_after(shipped_pipe):
    gated = GatedPipe(shipped_pipe)
    app = create_app(gated, Settings(max_queue=1))
    painter = app.state.painter
    reqs = lambda: [shipped_pipe_request()]  # noqa: E731
    try:
        with TestClient(app) as c:
            running = painter.submit(Job(reqs()))
            assert gated.entered.wait(10)
            queued = painter.submit(Job(reqs()))  # the one free place
            r = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY})
            assert r.status_code == 429 and "queue is full" in r.json()["detail"]
            assert int(r.headers["Retry-After"]) >= 1
            progress = c.get("/sdapi/v1/progress", params={"id_task": queued.id}).json()
            assert progress["status"] == "queued" and progress["queue_position"] == 0
            assert 'reason="queue_full"} 1.0' in c.get("/metrics").text
            gated.gate.set()
            assert running.done.wait(20) and queued.done.wait(20)
            assert running.state == queued.state == "done"
            assert c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY}).status_code == 200
    finally:
        gated.gate.set()
        painter.close()


def shipped_pipe_request():
    from shanshui.runtime.pipeline import Request

    return Request(prompt=PROMPT, steps=2, height=64, width=64)


def test_auth(shipped_pipe):
    key = "k" * 20
    app = create_app(shipped_pipe, Settings(api_key=key))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200  # open, for load balancers
        assert c.get("/sdapi/v1/samplers").status_code == 401
        r = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/sdapi/v1/samplers", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/sdapi/v1/samplers", auth=("anyone", key)).status_code == 200  # A1111's --api-auth style
        assert c.get("/sdapi/v1/samplers", auth=("anyone", key + "x")).status_code == 401
        r = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    app.state.painter.close()


def test_body_size_limit_and_cors_off(shipped_pipe):
    app = create_app(shipped_pipe, Settings(max_body_bytes=2000))
    with TestClient(app) as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x" * 3000})
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
        r = c.get("/sdapi/v1/samplers", headers={"Origin": "https://example.org"})
        assert "access-control-allow-origin" not in r.headers
    app.state.painter.close()
    app = create_app(shipped_pipe, Settings(cors_origins=["https://example.org"]))
    with TestClient(app) as c:
        r = c.get("/sdapi/v1/samplers", headers={"Origin": "https://example.org"})
        assert r.headers["access-control-allow-origin"] == "https://example.org"
    app.state.painter.close()


def test_progress_then_interrupt(shipped_pipe):
    app = create_app(shipped_pipe)
    answer = {}
    with TestClient(app) as c:
        def paint():
            answer["r"] = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 400, "width": 64, "height": 64,
                                                            "force_task_id": "task-1"})
        t = threading.Thread(target=paint)
        t.start()
        deadline = time.monotonic() + 20
        while True:
            p = c.get("/sdapi/v1/progress", params={"id_task": "task-1"}).json()
            if p["state"]["sampling_step"] >= 2:
                break
            assert time.monotonic() < deadline, p
            time.sleep(0.05)
        assert p["status"] == "running" and p["state"]["sampling_steps"] == 400 and 0 < p["progress"] < 1
        assert p["textinfo"].startswith("image 1/1, step ")
        assert c.get("/sdapi/v1/progress").json()["state"]["job"] == "task-1"  # the running job, without id_task
        assert c.post("/sdapi/v1/interrupt").json() == {"interrupted": True}
        t.join(20)
        assert answer["r"].status_code == 409 and "interrupted" in answer["r"].json()["detail"]
        assert c.post("/sdapi/v1/interrupt").json() == {"interrupted": False}
    app.state.painter.close()


def test_request_timeout_stops_the_job(shipped_pipe):
    app = create_app(shipped_pipe, Settings(timeout_s=0.5))
    with TestClient(app) as c:
        t0 = time.monotonic()
        r = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 1000, "width": 64, "height": 64})
        assert r.status_code == 504 and "--timeout" in r.json()["detail"]
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 10
        while app.state.painter.current is not None:  # the painter drops the job at its next step
            assert time.monotonic() < deadline
            time.sleep(0.05)
    app.state.painter.close()


@pytest.fixture(scope="module")
def encoderless_client(tmp_path_factory):
    """The shipped export as exports made before vae_encoder existed: no encoder folder, none in the manifest."""
    import shutil

    from shanshui.models import DEFAULT_ONNX
    from shanshui.runtime.pipeline import open_pipeline
    from shanshui.spec.manifest import MANIFEST

    root = tmp_path_factory.mktemp("old-export") / "onnx"
    shutil.copytree(DEFAULT_ONNX, root, ignore=shutil.ignore_patterns("vae_encoder"))
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    del manifest["components"]["vae_encoder"]
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    pipe = open_pipeline(root, threads=1)
    assert not pipe.components.has_encoder
    app = create_app(pipe)
    with TestClient(app) as c:
        yield c
    app.state.painter.close()


def test_img2img_on_the_shipped_export(client):
    init = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY, "seed": 3}).json()["images"][0]
    r = client.post("/sdapi/v1/img2img", json={"prompt": "明月当空，青山环绕", **TINY, "seed": 3, "init_images": [init],
                                               "denoising_strength": 0.6})
    assert r.status_code == 200, r.text
    assert png(r.json()["images"][0]).size == (64, 64)


def test_img2img_needs_an_encoder(encoderless_client):
    client = encoderless_client
    assert client.get("/api/config").json()["img2img"] is False
    init = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY}).json()["images"][0]
    r = client.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY, "init_images": [init]})
    assert r.status_code == 422 and "no VAE encoder" in r.json()["detail"]
    r = client.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY, "init_images": ["not base64!"]})
    assert r.status_code == 422 and "not valid base64" in r.json()["detail"]
    r = client.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY, "init_images": [base64.b64encode(b"GIF89a").decode()]})
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    r = client.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY})
    assert r.status_code == 422 and "init_images" in r.json()["detail"]


def test_finished_jobs_keep_no_pixels(client):
    """Jobs stay listed for progress queries; their images must not pile up in memory."""
    client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY, "force_task_id": "kept", "batch_size": 2})
    job = client.app.state.painter.find("kept")
    assert job.state == "done" and len(job.params) == 2 and job.images == []
    p = client.get("/sdapi/v1/progress", params={"id_task": "kept"}).json()
    assert p["status"] == "done" and p["progress"] == 1.0
