"""Lower precisions from an fp32 export: fp16 (fp16.py), calibrated int8 QDQ (int8.py, sensitivity.py), the image
quality gate against fp32 (gate.py), and the orchestrator that writes a checked copy (convert.py)."""
