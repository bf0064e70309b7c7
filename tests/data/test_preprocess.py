import torch

from transferkit.data.preprocess import InputTransform


def test_uint8_and_float_images_are_normalised_alike():
    # A float batch in [0, 1] must not be divided by 255 again: a frozen backbone would see near-constant input.
    transform = InputTransform(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize=8).eval()
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    from_uint8, from_float = transform(pixels), transform(pixels.float() / 255)
    torch.testing.assert_close(from_float, from_uint8)
    assert from_uint8.min() < -1.5 and from_uint8.max() > 1.5  # (0 - 0.5) / 0.25 = -2, (1 - 0.5) / 0.25 = 2
