"""Models: the official DGC networks, a CIFAR ResNet in three conv flavours, the plain BasicNet of
the sparsity study, and tools to convert any CNN and to load the official checkpoints."""

from .basicnet import BasicNet, basicnet
from .convert import Conversion, convert
from .dydensenet import DyDenseNet, dydensenet, dydensenet74, dydensenet86
from .dyresnet import DyResNet, dyresnet18
from .official import load_official
from .resnet_cifar import ResNetCifar, resnet8, resnet14, resnet20, resnet_cifar

__all__ = [
    "BasicNet",
    "Conversion",
    "DyDenseNet",
    "DyResNet",
    "ResNetCifar",
    "basicnet",
    "convert",
    "dydensenet",
    "dydensenet74",
    "dydensenet86",
    "dyresnet18",
    "load_official",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet_cifar",
]
