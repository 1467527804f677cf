"""The lean runtime: NumPy samplers over ONNX Runtime or PyTorch components. Imports nothing heavy."""
