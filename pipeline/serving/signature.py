"""The serving signature's names, shared by export (which writes it) and serve
(which reads it): one SavedModel endpoint taking the raw stored input and returning
class probabilities and the predicted class."""

SIGNATURE = "serving_default"
IMAGE_INPUT = "image"  # uint8 [batch, H, W, C]: the image models' input
TEXT_INPUT = "text"  # string [batch], raw UTF-8: the text models' input
PROBABILITIES = "probabilities"  # float32 [batch, C]
CLASS_ID = "class_id"  # int64 [batch]
