"""Export to ONNX: the component contract, the manifest and the exporter."""
