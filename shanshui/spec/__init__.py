"""The torch-free description of everything shanshui reads and writes: the component contract and its vocabulary
(component names, tensor names, precisions), diffusers source folders, export and engine manifests, folders made by
other exporters, CLIP tokenizer files, and which kind of folder a path is."""
