"""Models: the official DGC networks, CondenseNet-86, a CIFAR ResNet with any registered conv,
the plain BasicNet of the sparsity study, and tools to convert any CNN (``convert``, and
``condense`` for learned group convs) and to load the official checkpoints."""

from .basicnet import BasicNet, basicnet
from .condensenet import CondenseNet, condense, condensenet, condensenet86, official_param_count
from .convert import Conversion, convert
from .dydensenet import DyDenseNet, dydensenet, dydensenet74, dydensenet86
from .dyresnet import DyResNet, dyresnet18
from .official import load_official
from .resnet_cifar import ResNetCifar, resnet8, resnet14, resnet20, resnet_cifar

__all__ = [
    "BasicNet",
    "CondenseNet",
    "Conversion",
    "DyDenseNet",
    "DyResNet",
    "ResNetCifar",
    "basicnet",
    "condense",
    "condensenet",
    "condensenet86",
    "convert",
    "dydensenet",
    "dydensenet74",
    "dydensenet86",
    "dyresnet18",
    "load_official",
    "official_param_count",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet_cifar",
]
