"""`shanshui serve` works from the core install: the app paints with torch (and friends) impossible to import."""

import subprocess
import sys
import textwrap

from tests.runtime.test_torch_free import BLOCKED


def test_serve_without_torch():
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())
        from fastapi.testclient import TestClient
        import shanshui.cli  # the command registered in the CLI
        from shanshui.runtime.pipeline import open_pipeline
        from shanshui.serve.app import create_app
        app = create_app(open_pipeline(None, threads=1))
        with TestClient(app) as c:
            r = c.post("/sdapi/v1/txt2img", json={{"prompt": "一棵青松", "steps": 2, "width": 64, "height": 64}})
            assert r.status_code == 200, r.text
            assert len(r.json()["images"]) == 1
        app.state.painter.close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("SERVE-TORCH-FREE-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SERVE-TORCH-FREE-OK" in proc.stdout
