"""The names every docstring example of ``dgclab`` may use without importing them (the doctests
run in ``make test``: ``pytest --doctest-modules dgclab``)."""

import pytest


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import torch
    import torch.nn as nn

    from dgclab.models import basicnet, condensenet, resnet_cifar

    doctest_namespace.update(torch=torch, nn=nn, basicnet=basicnet, condensenet=condensenet,
                             resnet_cifar=resnet_cifar)
