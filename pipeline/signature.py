"""The exported model's serving signature: its name and its inputs' names.

Export writes them and serve reads them (and TF Serving clients send them), so they
are defined here once.
"""

SIGNATURE = "serving_default"
IMAGE_INPUT = "image"  # uint8 [batch, H, W, C], the raw stored pixels
TEXT_INPUT = "text"  # string [batch], raw UTF-8
