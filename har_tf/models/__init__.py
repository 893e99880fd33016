from har_tf.models.resnet import cifar_resnet

__all__ = ["cifar_resnet"]
