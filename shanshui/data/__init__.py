"""Training data: procedural shan shui paintings (scene -> render) with exact bilingual captions, written as an
imagefolder and read back."""
