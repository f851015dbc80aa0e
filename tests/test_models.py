"""The ResNets, modality networks, internal-classifier heads, parameter groups, MACs and
pretrained loading. References are independent of our code: torchvision's published
state-dict layout and parameter counts, published MAC counts, REFERENCE.md's head table,
closed-form arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.models.heads import ICHead, ICSpec, InternalClassifiers
from trainer.models.networks import ModalityNet, count_macs, load_pretrained
from trainer.models.resnet import ResNet

# torchvision's resnet18().state_dict(), written out by hand: a name ending in .weight or
# .bias is one tensor of the given shape; any other name is a BatchNorm2d, i.e. five
# entries (weight, bias, running_mean, running_var of that many channels, and
# num_batches_tracked).
TORCHVISION_RESNET18 = """
conv1.weight 64 3 7 7
bn1 64
layer1.0.conv1.weight 64 64 3 3
layer1.0.bn1 64
layer1.0.conv2.weight 64 64 3 3
layer1.0.bn2 64
layer1.1.conv1.weight 64 64 3 3
layer1.1.bn1 64
layer1.1.conv2.weight 64 64 3 3
layer1.1.bn2 64
layer2.0.conv1.weight 128 64 3 3
layer2.0.bn1 128
layer2.0.conv2.weight 128 128 3 3
layer2.0.bn2 128
layer2.0.downsample.0.weight 128 64 1 1
layer2.0.downsample.1 128
layer2.1.conv1.weight 128 128 3 3
layer2.1.bn1 128
layer2.1.conv2.weight 128 128 3 3
layer2.1.bn2 128
layer3.0.conv1.weight 256 128 3 3
layer3.0.bn1 256
layer3.0.conv2.weight 256 256 3 3
layer3.0.bn2 256
layer3.0.downsample.0.weight 256 128 1 1
layer3.0.downsample.1 256
layer3.1.conv1.weight 256 256 3 3
layer3.1.bn1 256
layer3.1.conv2.weight 256 256 3 3
layer3.1.bn2 256
layer4.0.conv1.weight 512 256 3 3
layer4.0.bn1 512
layer4.0.conv2.weight 512 512 3 3
layer4.0.bn2 512
layer4.0.downsample.0.weight 512 256 1 1
layer4.0.downsample.1 512
layer4.1.conv1.weight 512 512 3 3
layer4.1.bn1 512
layer4.1.conv2.weight 512 512 3 3
layer4.1.bn2 512
fc.weight 1000 512
fc.bias 1000
"""


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in TORCHVISION_RESNET18.strip().splitlines():
        name, *dims = line.split()
        if name.endswith((".weight", ".bias")):
            shapes[name] = tuple(map(int, dims))
        else:
            (channels,) = map(int, dims)
            for entry in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.{entry}"] = (channels,)
            shapes[f"{name}.num_batches_tracked"] = ()
    return shapes


def torchvision_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A hand-built checkpoint with torchvision's key names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in torchvision_resnet18_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


def test_resnet18_state_dict_is_torchvisions():
    state = ResNet("resnet18").state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_resnet18_shapes()
    assert len(state) == 122


def test_torchvision_layout_checkpoint_loads_strictly():
    source = torchvision_resnet18_state()
    model = ResNet("resnet18")
    model.load_state_dict(source, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key


@pytest.mark.parametrize("arch, params, keys", [
    # torchvision's published parameter counts (and state-dict sizes) of its ImageNet models
    ("resnet18", 11_689_512, 122),
    ("resnet50", 25_557_032, 320),
    ("resnet152", 60_192_808, 932),
])
def test_parameter_counts_match_torchvision(arch, params, keys):
    model = ResNet(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_bottleneck_strides_its_3x3_like_torchvision():
    block = ResNet("resnet50").layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("arch, gmacs", [("resnet18", 1.82), ("resnet50", 4.1)])
def test_macs_match_published_counts(arch, gmacs):
    # torchvision lists 1.81 and 4.09 G(multiply-accumulates) at 224x224 for its ImageNet
    # models; ours differ only by fc (1000 -> 101 classes), a few hundred thousand MACs.
    net = ModalityNet("iframe", arch, num_classes=101)
    assert net.count_macs(224) / 1e9 == pytest.approx(gmacs, rel=0.012)


def test_mv_conv1_saves_one_input_channel_of_macs():
    # conv1 sees 2 channels instead of 3: one channel's 7x7 kernels at 112x112 outputs x 64.
    rgb = ModalityNet("residual", "resnet18", 10, width=16).count_macs(64)
    mv = ModalityNet("mv", "resnet18", 10, width=16).count_macs(64)
    assert rgb - mv == 32 * 32 * 16 * 7 * 7


def test_count_macs_of_a_linear_layer():
    assert count_macs(nn.Linear(10, 3), torch.zeros(4, 10)) == 4 * 10 * 3


@pytest.mark.parametrize("modality, channels", [("iframe", 3), ("mv", 2), ("residual", 3)])
def test_modality_networks(modality, channels):
    net = ModalityNet(modality, "resnet18", num_classes=5, width=8)
    assert net.backbone.conv1.in_channels == channels
    if modality == "iframe":
        assert net.data_bn is None
    else:
        assert isinstance(net.data_bn, nn.BatchNorm2d) and net.data_bn.num_features == channels
    assert net(torch.randn(2, 3, channels, 32, 32)).shape == (2, 5)


def test_mv_conv1_is_coviars():
    conv = ModalityNet("mv", "resnet18", 5).backbone.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
        2, 64, (7, 7), (2, 2), (3, 3), None)


def test_tsn_averages_segment_logits():
    torch.manual_seed(0)
    net = ModalityNet("residual", "resnet18", num_classes=6, width=8).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        per_segment = torch.stack([net(x[:, s:s + 1]) for s in range(4)], 1)  # each segment alone
        assert torch.allclose(net(x), per_segment.mean(1), atol=1e-5)
        assert torch.allclose(net(x, average=False), per_segment, atol=1e-5)


def test_forward_exits_one_pass():
    net = ModalityNet("mv", "resnet18", num_classes=6, width=8).eval()
    x = torch.randn(2, 3, 2, 64, 64)
    with torch.no_grad():
        exits = net.forward_exits(x)
        assert exits.layer1.shape == (6, 8, 16, 16)
        assert exits.layer2.shape == (6, 16, 8, 8)
        assert exits.layer3.shape == (6, 32, 4, 4)
        assert torch.equal(exits.logits.view(2, 3, 6), net(x, average=False))


# REFERENCE.md section 1: (in, out, kernel, padding) of the three IC convolutions.
IC_TABLE = {
    "resnet18": [(64, 64, 7, 1), (128, 128, 3, 1), (256, 256, 3, 1)],
    "resnet50": [(256, 64, 3, 1), (512, 256, 3, 1), (1024, 1024, 3, 1)],
}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_internal_classifiers_follow_the_papers_heads(arch):
    num_classes, batch, segments = 7, 2, 3
    net = ModalityNet("iframe", arch, num_classes).eval()
    ics = InternalClassifiers(arch, num_classes).eval()
    for head, (cin, cout, k, p) in zip(ics.heads, IC_TABLE[arch], strict=True):
        assert (head.conv.in_channels, head.conv.out_channels, head.conv.kernel_size, head.conv.padding) == (
            cin, cout, (k, k), (p, p))
        assert head.conv.bias is None
        assert isinstance(head.bn, nn.BatchNorm2d) and head.pool.output_size == 4
        assert (head.fc.in_features, head.fc.out_features) == (cout * 16, num_classes)
        assert [type(m) for m in head.children()] == [nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, nn.Linear]
    x = torch.randn(batch, segments, 3, 112, 112)
    with torch.no_grad():
        exits = net.forward_exits(x)
        out = ics(exits, segments)
        assert out.shape == (batch, 3, num_classes)
        # TSN over segments, like the backbone: head 0 on each segment, then the mean
        direct = ics.heads[0](exits.layer1).view(batch, segments, num_classes).mean(1)
        assert torch.allclose(out[:, 0], direct, atol=1e-6)


def test_ic_head_has_no_relu():
    head = ICHead(ICSpec(8, 8, 3, 1), 3)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU)) for m in head.modules())


def test_narrow_networks_scale_the_heads():
    ics = InternalClassifiers("resnet18", 3, width=16)
    net = ModalityNet("residual", "resnet18", 3, width=16).eval()
    with torch.no_grad():
        assert ics.eval()(net.forward_exits(torch.randn(1, 2, 3, 64, 64)), 2).shape == (1, 3, 3)
    assert [h.conv.out_channels for h in ics.heads] == [16, 32, 64]


def groups_by_name(net: ModalityNet, **kwargs) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in net.named_parameters()}
    out = {}
    for group in net.param_groups(weight_decay=1e-4, lr_mult_stem=0.1, lr_mult_body=0.01, lr_mult_fc=1.0, **kwargs):
        for p in group["params"]:
            assert names[id(p)] not in out, "a parameter in two groups"
            out[names[id(p)]] = (group["lr_mult"], group["weight_decay"])
    assert set(out) == set(names.values()), "a parameter in no group"
    return out


@pytest.mark.parametrize("modality", ["mv", "residual"])
def test_coviar_lr_multipliers_mv_residual(modality):
    groups = groups_by_name(ModalityNet(modality, "resnet18", 5))
    assert groups["data_bn.weight"] == (0.1, 1e-4)
    assert groups["data_bn.bias"] == (0.1, 0.0)
    assert groups["backbone.conv1.weight"] == (0.1, 1e-4)
    assert groups["backbone.bn1.bias"] == (0.1, 0.0)
    assert groups["backbone.layer1.0.conv1.weight"] == (0.01, 1e-4)
    assert groups["backbone.layer4.1.bn2.weight"] == (0.01, 1e-4)  # CoViAR decays BN weights
    assert groups["backbone.layer3.0.downsample.1.bias"] == (0.01, 0.0)
    assert groups["backbone.fc.weight"] == (1.0, 1e-4)
    assert groups["backbone.fc.bias"] == (1.0, 0.0)


def test_coviar_lr_multipliers_iframe_stem_is_body():
    groups = groups_by_name(ModalityNet("iframe", "resnet50", 5))
    assert groups["backbone.conv1.weight"] == (0.01, 1e-4)
    assert groups["backbone.bn1.weight"] == (0.01, 1e-4)
    assert groups["backbone.fc.weight"] == (1.0, 1e-4)


def test_decay_norm_off_exempts_batchnorm_weights():
    groups = groups_by_name(ModalityNet("mv", "resnet18", 5), decay_norm=False)
    assert groups["data_bn.weight"] == (0.1, 0.0)
    assert groups["backbone.layer1.0.bn1.weight"] == (0.01, 0.0)
    assert groups["backbone.layer1.0.conv1.weight"] == (0.01, 1e-4)


@pytest.fixture
def resnet18_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18_state(), path)
    return path


def test_load_pretrained_residual_drops_fc_of_other_classes(resnet18_file):
    source = torchvision_resnet18_state()
    net = ModalityNet("residual", "resnet18", num_classes=51)
    data_bn = {k: v.clone() for k, v in net.data_bn.state_dict().items()}
    fc = net.backbone.fc.weight.clone()
    report = load_pretrained(net, resnet18_file)
    assert report.dropped == ["backbone.fc.weight", "backbone.fc.bias"]
    assert report.missing == [] and report.unexpected == [] and report.adapted == []
    assert len(report.loaded) == 120
    assert torch.equal(net.backbone.conv1.weight, source["conv1.weight"])
    assert torch.equal(net.backbone.layer3[1].bn2.running_var, source["layer3.1.bn2.running_var"])
    assert torch.equal(net.backbone.fc.weight, fc)
    assert all(torch.equal(v, data_bn[k]) for k, v in net.data_bn.state_dict().items())


def test_load_pretrained_same_classes_keeps_fc(resnet18_file):
    net = ModalityNet("iframe", "resnet18", num_classes=1000)
    report = load_pretrained(net, resnet18_file)
    assert report.dropped == [] and len(report.loaded) == 122
    assert torch.equal(net.backbone.fc.bias, torchvision_resnet18_state()["fc.bias"])


def test_load_pretrained_mv_conv1(resnet18_file):
    rgb = torchvision_resnet18_state()["conv1.weight"]  # (64, 3, 7, 7)
    net = ModalityNet("mv", "resnet18", num_classes=101)
    report = load_pretrained(net, resnet18_file, conv1_init="rgb_mean")
    assert report.adapted == ["backbone.conv1.weight"]
    expected = torch.stack([rgb.mean(1), rgb.mean(1)], 1)  # (64, 2, 7, 7)
    assert torch.allclose(net.backbone.conv1.weight, expected)

    net = ModalityNet("mv", "resnet18", num_classes=101)
    init = net.backbone.conv1.weight.clone()
    report = load_pretrained(net, resnet18_file)  # CoViAR: a new, randomly initialised conv1
    assert "backbone.conv1.weight" in report.dropped and report.adapted == []
    assert torch.equal(net.backbone.conv1.weight, init)


def test_load_pretrained_wrong_architecture_names_the_tensor(resnet18_file):
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\)"):
        load_pretrained(ModalityNet("iframe", "resnet50", 10), resnet18_file)


def test_load_pretrained_strict_reports_missing_and_unexpected(tmp_path):
    state = torchvision_resnet18_state()
    del state["layer2.1.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DataParallel style
    message = r"missing: backbone\.layer2\.1\.bn1\.running_mean.*unexpected: backbone\.extra"
    with pytest.raises(ValueError, match=message):
        load_pretrained(ModalityNet("iframe", "resnet18", 10), path)
    report = load_pretrained(ModalityNet("iframe", "resnet18", 10), path, strict=False)
    assert report.missing == ["backbone.layer2.1.bn1.running_mean"]
    assert report.unexpected == ["backbone.extra.weight"]


def test_load_pretrained_whole_network_from_our_checkpoint(tmp_path):
    trained = ModalityNet("mv", "resnet18", num_classes=5, width=8)
    with torch.no_grad():
        trained.data_bn.weight.fill_(3.0)
    path = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)
    net = ModalityNet("mv", "resnet18", num_classes=5, width=8)
    report = load_pretrained(net, path)
    assert report.missing == [] and report.dropped == []
    for key, value in trained.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_load_pretrained_rejects_non_checkpoints(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="no state dict"):
        load_pretrained(ModalityNet("iframe", "resnet18", 10), path)
