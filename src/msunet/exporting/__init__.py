"""Export: a run -> a bundle (`bundle.export`: ONNX, OpenVINO, LiteRT, SavedModel), int8 quantization
(`quantize`), the int8 graph rewrites (`onnx_rewrite`), and the run's own int8 bundle made once for
`msunet predict` (`run_bundle`).
"""
