import pytest
import torch

from spineloss.model import UNet3D


def test_shapes_and_divisor():
    m = UNet3D(1, 6, depth=3, base_channels=4)
    assert m.divisor == 4
    out = m(torch.randn(2, 1, 8, 12, 16))
    assert out.shape == (2, 6, 8, 12, 16)


def test_rejects_bad_sizes():
    m = UNet3D(1, 2, depth=3, base_channels=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        m(torch.randn(1, 1, 8, 10, 8))
    with pytest.raises(ValueError, match="B x C x D x H x W"):
        m(torch.randn(1, 8, 8, 8))


def test_instance_norm_leaky_relu_kaiming():
    m = UNet3D(1, 2, depth=2, base_channels=8)
    kinds = {type(x).__name__ for x in m.modules()}
    assert {"InstanceNorm3d", "LeakyReLU", "Conv3d", "ConvTranspose3d"} <= kinds
    conv = m.encoder[0][0]
    fan_in = conv.weight[0].numel()
    expected = (2.0 / (1 + 0.01 ** 2) / fan_in) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.35


def test_width_cap_and_seeded_init():
    torch.manual_seed(0)
    a = UNet3D(1, 2, depth=4, base_channels=8, max_channels=16)
    torch.manual_seed(0)
    b = UNet3D(1, 2, depth=4, base_channels=8, max_channels=16)
    assert a.widths == [8, 16, 16, 16]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_bf16_autocast_forward_backward():
    m = UNet3D(1, 3, depth=2, base_channels=4)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_stem_stride_two_keeps_full_resolution_output():
    m = UNet3D(1, 6, channels=(8, 16, 32), stem_stride=2)
    assert m.divisor == 8
    out = m(torch.randn(1, 1, 16, 24, 8))
    assert out.shape == (1, 6, 16, 24, 8)
    with pytest.raises(ValueError, match="stem_stride"):
        UNet3D(1, 2, stem_stride=3)


def test_bottleneck_blocks_widen_the_receptive_field():
    """The extra bottleneck blocks let an output voxel see farther input voxels."""
    torch.manual_seed(0)
    plain = UNet3D(1, 2, channels=(4, 8), stem_stride=2)
    torch.manual_seed(0)
    deep = UNet3D(1, 2, channels=(4, 8), stem_stride=2, bottleneck_blocks=2)
    assert len(deep.bottleneck) == 2 and len(plain.bottleneck) == 0
    reach = {}
    for name, m in (("plain", plain), ("deep", deep)):
        for block in list(m.encoder) + list(m.decoder) + list(m.bottleneck):  # instance norm couples
            for i, layer in enumerate(block):                                 # all voxels: take it out
                if isinstance(layer, torch.nn.InstanceNorm3d):
                    block[i] = torch.nn.Identity()
        x = torch.zeros(1, 1, 96, 4, 4, requires_grad=True)
        m(x)[0, 1, 0].sum().backward()
        reach[name] = int((x.grad[0, 0].abs().sum((1, 2)) > 0).nonzero().max())
    # receptive field of (4, 8) with a stride-2 stem: 27 voxels; two blocks at stride 4 add 4 * 2 * 4
    assert reach["plain"] < 24 <= reach["deep"]
    assert deep(torch.randn(1, 1, 16, 8, 8)).shape == (1, 2, 16, 8, 8)
    with pytest.raises(ValueError, match="bottleneck_blocks"):
        UNet3D(1, 2, bottleneck_blocks=-1)
