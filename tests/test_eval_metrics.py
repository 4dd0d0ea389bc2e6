"""elite eval's parts: metric arithmetic on fixed tensors, preprocessing, the metric models, prompts, sheets, compare."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from elite_cli.errors import InputError
from elite_cli.evaluation import dreambench
from elite_cli.evaluation.compare import compare_reports, read_report
from elite_cli.evaluation.contact_sheet import MARGIN, SheetRow, contact_sheet
from elite_cli.evaluation.metrics import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipScorer,
    DinoScorer,
    cosine_matrix,
    l2_normalize,
    mean_cosine_to_references,
    paired_cosine,
    resize_and_center_crop,
    summarize,
)
from elite_cli.evaluation.runner import (
    ConceptResult,
    EvalReport,
    EvalSettings,
    ImageScore,
    clip_t_text,
    generation_prompt,
    read_prompt_templates,
)
from elite_cli.evaluation.subjects import parse_class_words, picture_name, record_class_word
from elite_cli.evaluation.tiny_metric_models import build_tiny_metric_models


def picture(seed, size=(60, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


# ---- arithmetic against hand-computed cosines ------------------------------------------------

A = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # unit vectors (0.6, 0.8) and (1, 0)
B = torch.tensor([[4.0, 3.0], [0.0, 2.0]])  # unit vectors (0.8, 0.6) and (0, 1)


def test_cosine_matrix_by_hand():
    expected = torch.tensor([[0.6 * 0.8 + 0.8 * 0.6, 0.8], [0.8, 0.0]])
    assert torch.allclose(cosine_matrix(A, B), expected, atol=1e-6)


def test_mean_cosine_to_references_averages_over_references_per_generated_image():
    # Column means of the matrix above: ((0.96 + 0.8) / 2, (0.8 + 0) / 2).
    scores = mean_cosine_to_references(A, B)
    assert torch.allclose(scores, torch.tensor([0.88, 0.4]), atol=1e-6)
    # Their mean is the reference evaluators' (refs @ gens.T).mean().
    assert math.isclose(float(scores.mean()), float((l2_normalize(A) @ l2_normalize(B).T).mean()), abs_tol=1e-6)


def test_paired_cosine_pairs_rows():
    assert torch.allclose(paired_cosine(A, B), torch.tensor([0.96, 0.0]), atol=1e-6)
    assert torch.allclose(paired_cosine(A, -A), torch.tensor([-1.0, -1.0]), atol=1e-6)


def test_l2_normalize_scales_rows_to_unit_length():
    assert torch.allclose(l2_normalize(A), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))


@pytest.mark.parametrize("values, mean, std, count", [
    ([1.0, 2.0, 3.0, 4.0], 2.5, math.sqrt(5 / 3), 4),  # sample std: sum of squares 5 over n - 1 = 3
    ([0.5], 0.5, None, 1),
    ([], None, None, 0),
])
def test_summarize(values, mean, std, count):
    summary = summarize(values)
    assert summary.count == count
    assert (summary.mean is None) if mean is None else math.isclose(summary.mean, mean)
    assert (summary.std is None) if std is None else math.isclose(summary.std, std)


# ---- preprocessing ---------------------------------------------------------------------------

def test_resize_and_center_crop_keeps_the_centre():
    # 100 x 50, white in the middle 50 x 50, black at the sides: the crop is all white.
    pixels = np.zeros((50, 100, 3), np.uint8)
    pixels[:, 25:75] = 255
    cropped = resize_and_center_crop(Image.fromarray(pixels), 50, 50)
    assert cropped.size == (50, 50)
    assert np.asarray(cropped).min() == 255


def test_resize_follows_the_short_side():
    cropped = resize_and_center_crop(picture(0, (60, 40)), 36, 32)
    assert cropped.size == (32, 32)


def test_pixels_are_normalised_with_each_models_mean_and_std(scorers):
    clip, dino = scorers
    grey = Image.new("RGB", (50, 40), (51, 102, 204))  # 0.2, 0.4, 0.8 of full scale
    expected_clip = [(value - mean) / std for value, mean, std in zip((0.2, 0.4, 0.8), CLIP_MEAN, CLIP_STD)]
    expected_dino = [(value - mean) / std for value, mean, std in zip((0.2, 0.4, 0.8), IMAGENET_MEAN, IMAGENET_STD)]
    for scorer, expected in ((clip, expected_clip), (dino, expected_dino)):
        pixels = scorer.pixels([grey])
        assert pixels.shape == (1, 3, 32, 32)
        assert torch.allclose(pixels[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


# ---- the metric models -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    paths = build_tiny_metric_models(tmp_path_factory.mktemp("tiny-metric-models"))
    return ClipScorer.load(str(paths.clip)), DinoScorer.load(str(paths.dino))


def test_identical_images_give_clip_i_and_dino_of_one(scorers):
    clip, dino = scorers
    source = picture(1)
    generated = [source.copy(), source.copy()]
    assert torch.allclose(mean_cosine_to_references(clip.embed_images([source]), clip.embed_images(generated)),
                          torch.ones(2), atol=1e-5)
    assert torch.allclose(mean_cosine_to_references(dino.embed_images([source]), dino.embed_images(generated)),
                          torch.ones(2), atol=1e-5)


def test_different_images_score_below_one(scorers):
    clip, dino = scorers
    assert float(mean_cosine_to_references(clip.embed_images([picture(1)]), clip.embed_images([picture(2)]))) < 0.9999
    assert float(mean_cosine_to_references(dino.embed_images([picture(1)]), dino.embed_images([picture(2)]))) < 0.9999


def test_embeddings_are_unit_length_and_batch_independent(scorers):
    clip, dino = scorers
    images = [picture(3), picture(4)]
    for features in (clip.embed_images(images), clip.embed_texts(["a cat", "a dog on the beach"]), dino.embed_images(images)):
        assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(clip.embed_images(images)[1], clip.embed_images(images[1:])[0], atol=1e-5)
    assert torch.allclose(clip.embed_texts(["a cat", "a dog on the beach"])[0], clip.embed_texts(["a cat"])[0], atol=1e-5)


def test_dino_feature_is_the_normalised_cls_token(scorers):
    _, dino = scorers
    image = picture(5)
    with torch.no_grad():
        hidden = dino.model(pixel_values=dino.pixels([image])).last_hidden_state
    cls = hidden[:, 0] / hidden[:, 0].norm(dim=-1, keepdim=True)
    assert torch.allclose(dino.embed_images([image]), cls, atol=1e-6)
    assert dino.pixels([image]).shape == (1, 3, 32, 32)


def test_a_missing_metric_model_names_its_flag(tmp_path):
    from elite_cli.errors import ModelError

    with pytest.raises(ModelError, match="--clip-model"):
        ClipScorer.load(str(tmp_path / "no-such-clip"))
    with pytest.raises(ModelError, match="--dino-model"):
        DinoScorer.load(str(tmp_path / "no-such-dino"))


# ---- prompts ---------------------------------------------------------------------------------

def test_dreambench_lists():
    for prompts in (dreambench.OBJECT_PROMPTS, dreambench.LIVE_OBJECT_PROMPTS):
        assert len(prompts) == 25 and len(set(prompts)) == 25
        assert all(prompt.count("{}") == 1 for prompt in prompts)
        assert prompts[:10] == dreambench.OBJECT_PROMPTS[:10] and prompts[-5:] == dreambench.OBJECT_PROMPTS[-5:]
    assert "a {} floating in an ocean of milk" in dreambench.OBJECT_PROMPTS
    assert "a {} in a purple wizard outfit" in dreambench.LIVE_OBJECT_PROMPTS
    assert dreambench.dreambench_prompts("dog") == dreambench.LIVE_OBJECT_PROMPTS
    assert dreambench.dreambench_prompts("teapot") == dreambench.OBJECT_PROMPTS
    assert dreambench.dreambench_prompts(None) == dreambench.OBJECT_PROMPTS
    assert len(dreambench.SUBJECT_CLASSES) == 30
    assert sum(dreambench.is_live(word) for word in dreambench.SUBJECT_CLASSES.values()) == 9


def test_prompt_texts():
    assert generation_prompt("a {} on the beach", "mycat") == "a <mycat> on the beach"
    assert clip_t_text("a {} on the beach", "cat") == "a cat on the beach"
    assert clip_t_text("a {} on the beach", None) == "a on the beach"
    assert clip_t_text("a red {}", "stuffed animal") == "a red stuffed animal"


@pytest.mark.parametrize("text, message", [
    ("a photo on the beach\n", "exactly one {}"),
    ("a {} next to a {}\n", "exactly one {}"),
    ("# only a comment\n\n", "holds no prompts"),
])
def test_bad_prompt_files(tmp_path, text, message):
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_prompt_templates(path)


def test_prompt_file_skips_comments_and_blanks(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# scenes\na {} on the beach\n\n  a red {}  \n")
    assert read_prompt_templates(path) == ("a {} on the beach", "a red {}")
    with pytest.raises(InputError, match="does not exist"):
        read_prompt_templates(tmp_path / "missing.txt")


def test_settings_check():
    with pytest.raises(InputError, match="-n must be at least 1"):
        EvalSettings(num_images=0).check()
    with pytest.raises(InputError, match="exactly one"):
        EvalSettings(prompts=("no subject",)).check()


def test_class_words():
    assert parse_class_words(["mycat=cat", "toy = stuffed  animal"]) == {"mycat": "cat", "toy": "stuffed animal"}
    for bad in ("mycat", "=cat", "mycat="):
        with pytest.raises(InputError, match="NAME=WORD"):
            parse_class_words([bad])
    record = SimpleNamespace
    assert record_class_word(record(tags=("pets", "class-cat"))) == "cat"
    assert record_class_word(record(tags=("Class-stuffed_animal",))) == "stuffed animal"
    assert record_class_word(record(tags=("class_word=dog",))) == "dog"
    assert record_class_word(record(tags=("pets", "classic"))) is None
    assert record_class_word(record(tags=())) is None
    assert picture_name(__import__("pathlib").Path("my cat (1).jpg")) == "my_cat_1"


# ---- contact sheet ---------------------------------------------------------------------------

def test_contact_sheet_layout():
    tile = 64
    source = Image.new("RGB", (32, 32), (255, 0, 0))
    rows = [SheetRow("a <x> on the beach", [Image.new("RGB", (16, 16), (0, 0, 255))] * 3, [0, 1, 2]),
            SheetRow("a red <x>", [Image.new("RGB", (16, 16), (0, 255, 0))] * 3, [0, 1, 2])]
    sheet = contact_sheet(source, rows, tile=tile, title="<x>")
    cell_width = tile + MARGIN
    assert sheet.width == MARGIN + 4 * cell_width
    pixels = np.asarray(sheet)
    assert tuple(pixels[MARGIN + 5, MARGIN + 5]) == (255, 0, 0)  # source, top left
    assert tuple(pixels[MARGIN + 5, MARGIN + cell_width + 5]) == (0, 0, 255)  # first row's images after it
    row_height = (sheet.height - MARGIN) // 2
    assert tuple(pixels[MARGIN + row_height + 5, MARGIN + 3 * cell_width + 5]) == (0, 255, 0)
    assert tuple(pixels[MARGIN + row_height + 5, MARGIN + 5]) == (255, 255, 255)  # source only once
    caption = pixels[MARGIN + tile + 2: MARGIN + row_height - MARGIN, MARGIN + cell_width: MARGIN + cell_width + tile]
    assert (caption < 128).any()  # the prompt is written under the image


# ---- compare ---------------------------------------------------------------------------------

def report(values, llambda=0.8, clip_model="clip", names=("cat",), batch_size=4, class_word="cat"):
    concepts = [ConceptResult(name, class_word, "cat.png", images=[
        ImageScore("a <cat>", "a cat", seed, "x.png", clip_t=value, clip_i=value / 2, dino=value / 4)
        for seed, value in enumerate(values)]) for name in names]
    settings = EvalSettings(llambda=llambda)
    return EvalReport(settings={"lambda": settings.llambda, "prompts": "dreambench", "batch_size": batch_size},
                      models={"clip_model": clip_model, "dino_model": "dino"}, concepts=concepts, output_dir="out").to_dict()


def test_compare_differences_by_hand():
    comparison = compare_reports(report([0.2, 0.4]), report([0.3, 0.7], llambda=0.6, batch_size=1))
    cat = comparison.rows["cat"]
    assert math.isclose(cat["clip_t"].first, 0.3) and math.isclose(cat["clip_t"].second, 0.5)
    assert math.isclose(cat["clip_t"].delta, 0.2)
    assert math.isclose(cat["dino"].delta, 0.05)
    assert math.isclose(comparison.overall["clip_i"].delta, 0.1)
    assert comparison.differences == [("lambda", 0.8, 0.6)]  # batch size changes speed only
    assert comparison.warnings == []


def test_compare_warns_when_runs_measure_different_things():
    comparison = compare_reports(report([0.2]), report([0.3], clip_model="other", names=("cat", "dog")))
    assert any("metric models" in warning for warning in comparison.warnings)
    assert any("<dog>" in warning for warning in comparison.warnings)
    assert comparison.rows["dog"]["clip_t"].first is None and comparison.rows["dog"]["clip_t"].delta is None


def test_compare_warns_about_an_interrupted_run():
    interrupted = report([0.3])
    interrupted["complete"] = False
    comparison = compare_reports(report([0.2]), interrupted, "a.json", "b.json")
    assert comparison.warnings == ["b.json is an interrupted run; it holds only the concepts finished before it stopped."]


def test_compare_flags_a_changed_class_word():
    comparison = compare_reports(report([0.2]), report([0.3], class_word=None))
    assert ("<cat> class_word", "cat", None) in comparison.differences
    assert comparison.warnings == ["<cat> has class word 'cat' in A and no class word in B, so its CLIP-T texts differ."]


def test_read_report_refuses_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="not an elite eval results file"):
        read_report(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        read_report(path)
    path.write_text(json.dumps(report([0.5])))
    assert read_report(path)["overall"]["clip_t"]["mean"] == 0.5


def test_results_format_documents_every_key():
    from pathlib import Path

    import elite_cli.evaluation

    documented = (Path(elite_cli.evaluation.__file__).parent / "RESULTS_FORMAT.md").read_text()
    data = report([0.2, 0.4])
    concept = data["concepts"]["cat"]
    keys = [*data, *concept, *concept["images"][0], *concept["prompts"][0], *EvalSettings().__dataclass_fields__]
    missing = sorted({key for key in keys if f"`{key}`" not in documented})
    assert missing == []
    assert '"elite-eval/1"' in documented and data["format"] == "elite-eval/1"
