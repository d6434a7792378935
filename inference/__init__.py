"""The model layer, installed as `plcbridge.inference` (never import it as `inference`).

- `manifest`: what a model is (file, hash, interface, preprocessing, threshold) and `load_manifest`;
- `preprocess`: frame -> tensor, the one implementation shared by training and run time;
- `session`: `Model` (build-time checks, `judge()` -> `Verdict`, timeout watchdog);
- `errors`: ModelError, BadFrame, InferenceTimeout, InferenceError;
- `letterbox`, `detection`, `anomaly`: the outputs of YOLO detectors and anomalib models decoded
  (vectorised numpy), and `rules`: the manifest's verdict rules and `judge()`, the one function
  that turns those outputs into PASS or FAIL, a score and the findings the PLC gets;
- `train_demo`: retrains the bundled `models/demo` (needs torch; never imported at run time);
- `train_anomaly`: rebuilds the bundled `models/anomaly` (numpy and onnx; never at run time).

Nothing is re-exported here, so that reading a manifest does not import onnxruntime.
"""
