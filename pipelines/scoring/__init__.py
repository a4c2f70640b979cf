"""The scoring service: the deployed model behind an HTTP API (``python -m pipelines serve``).

`pipelines.scoring.runtime` loads a verified version folder in the configured
format (ONNX fp32, ONNX int8 or PyTorch); `pipelines.scoring.validation` turns
request bodies into the spec's raw columns or a 4xx naming the field;
`pipelines.scoring.app` is the FastAPI application with the Open Inference
Protocol (v2) and plain JSON (v1) endpoints and the hot-reloading model store.
Nothing here imports torch unless the ``torch`` format is chosen.
"""
