"""The server on a real loopback socket: a client that hangs up stops its job; image-to-image on a model with a
VAE encoder (the shipped diffusers folder on the torch backend)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from shanshui.serve.app import create_app
from tests.serve.conftest import TINY, serving

PROMPT = "秋山红叶，凉亭"


def test_client_disconnect_stops_its_job(shipped_pipe):
    app = create_app(shipped_pipe)
    painter = app.state.painter
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"prompt": PROMPT, "steps": 1000, "width": 64, "height": 64, "force_task_id": "gone"}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "gone"}).json()["state"]["sampling_step"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sock.close()  # the client goes away mid-painting
        job = painter.find("gone")
        assert job.done.wait(10), "the job went on painting after its client left"
        assert job.state == "cancelled" and job.cancel_reason == "client disconnected" and job.step < 1000
        assert 'reason="disconnected"} 1.0' in httpx.get(f"{url}/metrics").text
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": PROMPT, **TINY})  # the painter is free again
        assert r.status_code == 200


@pytest.fixture(scope="module")
def torch_pipe():
    pytest.importorskip("torch", reason="img2img on the shipped model needs its VAE encoder: the [torch] extra")
    from shanshui.models import default_source_path
    from shanshui.runtime.pipeline import open_pipeline

    return open_pipeline(default_source_path(), backend="torch", threads=1)


def test_img2img(torch_pipe):
    from fastapi.testclient import TestClient

    app = create_app(torch_pipe)
    sketch = np.full((96, 80, 3), 235, np.uint8)
    sketch[40:, :, :] = (70, 90, 80)  # a dark mountain under a pale sky
    buf = io.BytesIO()
    Image.fromarray(sketch).save(buf, format="JPEG")
    init = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    with TestClient(app) as c:
        assert c.get("/api/config").json()["img2img"] is True
        r = c.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY, "steps": 4, "seed": 5,
                                              "init_images": [init], "denoising_strength": 0.5, "mask": None})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["parameters"]["init_images"] is None and out["parameters"]["denoising_strength"] == 0.5
        assert json.loads(out["info"])["denoising_strength"] == 0.5
        im = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
        assert im.size == (64, 64) and "Denoising strength: 0.5" in im.info["parameters"]
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert a[:16].mean() > a[-16:].mean()  # the layout survives: sky above, mountain below
        r = c.post("/sdapi/v1/img2img", json={"prompt": PROMPT, **TINY, "init_images": [init], "denoising_strength": 0})
        assert r.status_code == 422 and "strength must be in (0, 1]" in r.json()["detail"]
    app.state.painter.close()
