"""TFX-like stages of the HAR pipeline; `python -m pipeline.run` chains them."""
