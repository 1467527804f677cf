"""The core install generates without torch: a subprocess in which importing torch (and friends) fails."""

import subprocess
import sys
import textwrap

BLOCKED = ["torch", "diffusers", "transformers", "onnx", "safetensors", "accelerate"]


def test_generate_without_torch(tiny_export, tmp_path):
    out = tmp_path / "free.png"
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the import blocker failed")
        from shanshui.cli import app
        try:
            app(["generate", "一棵青松，青山环绕，云雾缭绕", "--model", {str(tiny_export)!r}, "--steps", "3",
                 "-o", {str(out)!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("TORCH-FREE-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH-FREE-OK" in proc.stdout
    assert out.is_file() and out.stat().st_size > 1000
