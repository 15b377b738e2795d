"""Complete-verification front end: ``robustcert verify`` on ONNX + VNN-LIB instances (falsification,
CROWN, α-CROWN, branch and bound)."""
