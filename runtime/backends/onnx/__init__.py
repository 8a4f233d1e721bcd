"""The onnxruntime engine: a bundle's ONNX build in a stock InferenceSession, and its tokenizer."""
