"""One record per backbone (models/registry.py): its stages named without building it match the network's."""

import pytest
import torch

from transferkit.config import BACKBONES
from transferkit.errors import UserError
from transferkit.models import BackboneClassifier
from transferkit.models.registry import ARCHITECTURES, architecture
from transferkit.models.stages import stage_pieces


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbones_record_names_the_stages_its_network_has(backbone):
    with torch.random.fork_rng(devices=[]):
        model = BackboneClassifier(backbone, 2)
    assert tuple(name for name, _, _ in stage_pieces(backbone, model.features)) == ARCHITECTURES[backbone].stages


def test_an_unknown_backbone_is_one_line():
    with pytest.raises(UserError, match=r"^--backbone vgg11: unknown; choose one of resnet18, "):
        architecture("vgg11")
