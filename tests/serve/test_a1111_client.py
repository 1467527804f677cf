"""An independent AUTOMATIC1111 client (`webuiapi`, written against the real web UI) talks to `shanshui serve`."""

from __future__ import annotations

import pytest

from shanshui.serve.app import Settings, create_app
from tests.serve.conftest import serving

webuiapi = pytest.importorskip("webuiapi", reason="the [dev] extra installs webuiapi")


def test_webuiapi_paints(shipped_pipe):
    key = "a-long-enough-key-123"
    app = create_app(shipped_pipe, Settings(api_key=key))
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="DPM++ 2M", steps=2)
        api.set_auth("client", key)  # HTTP Basic, as A1111's --api-auth
        # the client sends ~50 fields (enable_hr, hr_upscaler, scheduler, alwayson_scripts, ...): all accepted
        result = api.txt2img(prompt="一棵青松，青山环绕，云雾缭绕", negative_prompt="blurry", seed=1234, width=64, height=64,
                             batch_size=2, cfg_scale=6)
        assert len(result.images) == 2 and result.images[0].size == (64, 64)
        assert result.info["all_seeds"] == [1234, 1235] and result.info["sampler_name"] == "DPM++ 2M"
        assert result.parameters["prompt"] == "一棵青松，青山环绕，云雾缭绕"
        assert "Seed: 1235" in result.images[1].info["parameters"]
        assert [s["name"] for s in api.get_samplers()] == ["DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "Euler Karras"]
        assert api.get_sd_models()[0]["title"] == "shanshui-default"
        assert api.get_options()["sd_model_checkpoint"] == "shanshui-default"
        assert api.get_progress()["state"]["job_count"] == 0
        api.set_auth("client", "wrong")
        with pytest.raises(RuntimeError) as e:  # the client's error for a non-200 answer: (status, body)
            api.txt2img(prompt="x", width=64, height=64)
        assert e.value.args[0] == 401
