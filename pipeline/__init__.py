"""TFX-like stages of the HAR pipeline; `python -m pipeline.run` chains them."""

# Every stage CLI (`python -m pipeline.<stage>`) imports this package first: turn
# TensorFlow's oneDNN kernels on before any stage module imports TensorFlow.
from har_tf.onednn import enable_onednn

enable_onednn()
