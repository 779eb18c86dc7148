"""The edge bundle: int8 dynamic quantization, TorchScript export, sha256 manifest."""
