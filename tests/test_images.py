"""Image and mask preparation: whatever users bring becomes a square RGB picture and a mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from elite_cli.errors import InputError
from elite_cli.model.images import CLIP_MEAN, CLIP_STD, clip_inputs, prepare_image


def gradient(width, height):
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 90, np.float32)], axis=2).astype(np.uint8)


def save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(gradient(40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    prepared = prepare_image(path)
    # Displayed upright the picture is 20 wide and 40 tall; the square is its full width.
    assert prepared.image.size == (20, 20)


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "I;16", "1", "LA"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(gradient(24, 24))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
        assert image.mode.startswith("I;16")
    else:
        image = rgb.convert(mode)
    path = save(tmp_path, f"img.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}", image)
    prepared = prepare_image(path)
    assert prepared.image.mode == "RGB" and prepared.image.size == (24, 24)
    if mode == "I;16":  # the full 16-bit range maps onto 8 bits, not clipped to white
        grey = np.asarray(prepared.image)[..., 0]
        assert grey.min() < 50 and grey.max() > 200


def test_alpha_channel_is_the_mask_without_a_mask_file(tmp_path):
    rgba = np.dstack([gradient(30, 30), np.zeros((30, 30), np.uint8)])
    rgba[10:20, 5:15, 3] = 255
    prepared = prepare_image(save(tmp_path, "cutout.png", Image.fromarray(rgba, "RGBA")))
    assert prepared.mask.sum() == 100
    assert prepared.mask_sha256 == ""


def test_mask_threshold_and_crop_around_object(tmp_path):
    image = Image.fromarray(gradient(200, 100))
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 150:170] = 200  # object near the right edge
    mask[0:5, 0:5] = 127  # not above the threshold: background
    prepared = prepare_image(save(tmp_path, "wide.png", image), save(tmp_path, "wide_mask.png", Image.fromarray(mask)))
    side = prepared.image.size[0]
    assert prepared.image.size == (side, side) and 20 < side <= 100
    assert prepared.mask.sum() == 400  # the whole object survives the crop
    rows, cols = np.nonzero(prepared.mask)
    assert abs((rows.min() + rows.max() + 1) / 2 - side / 2) <= 1  # centred
    assert abs((cols.min() + cols.max() + 1) / 2 - side / 2) <= 1
    assert prepared.mask_sha256.startswith("sha256:") and prepared.image_sha256 != prepared.mask_sha256


def test_without_mask_the_centre_square_is_used(tmp_path):
    array = gradient(90, 30)
    prepared = prepare_image(save(tmp_path, "wide.png", Image.fromarray(array)))
    assert prepared.image.size == (30, 30)
    assert np.array_equal(np.asarray(prepared.image), array[:, 30:60])
    assert prepared.mask.all()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "missing.png", None), "does not exist"),
        (lambda d: ((d / "text.png").write_text("hello") and d / "text.png", None), "is not an image"),
        (lambda d: (save(d, "a.png", Image.fromarray(gradient(20, 20))), save(d, "m.png", Image.new("L", (10, 20), 255))), "mask is 10x20 but the image is 20x20"),
        (lambda d: (save(d, "a.png", Image.fromarray(gradient(20, 20))), save(d, "m.png", Image.new("L", (20, 20), 100))), "mask is empty"),
        (lambda d: (save(d, "cut.png", Image.new("RGBA", (20, 20), (9, 9, 9, 0))), None), "picture is fully transparent"),
    ],
)
def test_bad_input_is_one_clear_sentence(tmp_path, setup, message):
    image, mask = setup(tmp_path)
    with pytest.raises(InputError) as error:
        prepare_image(image, mask)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_truncated_image_is_refused(tmp_path):
    path = save(tmp_path, "photo.jpg", Image.fromarray(gradient(64, 64)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt or truncated"):
        prepare_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", Image.new("RGB", (400, 400)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(InputError, match="too large to decode safely"):
        prepare_image(path)


def test_clip_inputs_follow_the_spec(tmp_path):
    array = gradient(48, 48)
    mask = np.zeros((48, 48), np.uint8)
    mask[12:36, 6:30] = 255
    prepared = prepare_image(save(tmp_path, "a.png", Image.fromarray(array)), save(tmp_path, "m.png", Image.fromarray(mask)))
    pixels, grid_mask = clip_inputs(prepared, 224, 16)
    assert pixels.shape == (2, 3, 224, 224) and grid_mask.shape == (16, 16)
    full = np.asarray(prepared.image.resize((224, 224), Image.BICUBIC), np.float32) / 255
    expected = (torch.from_numpy(full).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert (pixels[0] - expected).abs().max() < 1e-5
    # Object image: masked at full size (black background) before resizing.
    obj = np.asarray(prepared.image) * prepared.mask[..., None]
    obj = np.asarray(Image.fromarray(obj.astype(np.uint8)).resize((224, 224), Image.BICUBIC), np.float32) / 255
    expected_obj = (torch.from_numpy(obj).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert (pixels[1] - expected_obj).abs().max() < 1e-5
    side = prepared.mask.shape[0]
    for i in range(16):
        for j in range(16):  # nearest neighbour: source index floor(i * side / 16)
            assert grid_mask[i, j] == float(prepared.mask[i * side // 16, j * side // 16])


def test_a_16_bit_picture_is_encoded_over_its_full_range(use_tiny_models, tmp_path):
    """A 16-bit greyscale gradient gives the concept, thumbnail and preview of its 8-bit copy (PIL's own
    convert("RGB") clips it to almost white)."""
    from elite_cli.api import Session
    from elite_cli.library.thumbnails import preview_png, thumbnail_png

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "deep.png")  # PNG, 16 bits per sample
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I;16")
    eight_bit = np.clip(gradient / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(eight_bit, "L").save(tmp_path / "flat.png")

    def pixels(png: bytes) -> np.ndarray:
        import io

        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)

    deep_thumbnail, flat_thumbnail = thumbnail_png(tmp_path / "deep.png"), thumbnail_png(tmp_path / "flat.png")
    assert abs(pixels(deep_thumbnail).mean() - 127.5) < 3  # it was 254
    assert np.array_equal(pixels(deep_thumbnail), pixels(flat_thumbnail))
    assert np.array_equal(pixels(preview_png(tmp_path / "deep.png", None)), pixels(preview_png(tmp_path / "flat.png", None)))
    with Session() as session:
        deep = session.add_concept(tmp_path / "deep.png", "none")
        flat = session.add_concept(tmp_path / "flat.png", "none")
        deep_concept, flat_concept = session.store.load(deep.name), session.store.load(flat.name)
    assert torch.equal(deep_concept.words, flat_concept.words) and torch.equal(deep_concept.local, flat_concept.local)
