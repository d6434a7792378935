"""The model layer, installed as `plcbridge.inference` (never import it as `inference`).

- `manifest`: what a model is (file, hash, interface, preprocessing, threshold) and `load_manifest`;
- `preprocess`: frame -> tensor, the one implementation shared by training and run time;
- `session`: `Model` (build-time checks, `judge()` -> `Verdict`, timeout watchdog);
- `errors`: ModelError, BadFrame, InferenceTimeout, InferenceError;
- `train_demo`: retrains the bundled `models/demo` (needs torch; never imported at run time).

Nothing is re-exported here, so that reading a manifest does not import onnxruntime.
"""
