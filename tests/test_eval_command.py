"""`elite eval` end to end on the tiny models: table, JSON, images, contact sheets, compare, errors."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from elite_cli.errors import InputError
from elite_cli.commands.evaluate import eval_command
from elite_cli.evaluation.tiny_metric_models import build_tiny_metric_models

FAST = ["-n", "1", "--steps", "2", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def app():
    # The main CLI registers eval_command the same way (`app.command("eval")(eval_command)`).
    application = typer.Typer()
    application.command("eval")(eval_command)
    application.command("version")(lambda: None)  # two commands, so "eval" is a sub-command as in elite
    return application


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    return build_tiny_metric_models(tmp_path_factory.mktemp("tiny-metric-models"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for seed, name in ((1, "cat.png"), (2, "mug.png")):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    prompts = folder / "prompts.txt"
    prompts.write_text("# two templates\na {} on the beach\na red {}\n")
    return paths, prompts


def set_environment(patch, tiny_models, metric_models, library):
    """Models and library come from the environment, as the main CLI resolves them too."""
    patch.setenv("ELITE_HOME", str(library))
    patch.setenv("ELITE_BASE_MODEL", str(tiny_models.base_model))
    patch.setenv("ELITE_IMAGE_ENCODER", str(tiny_models.image_encoder))
    patch.setenv("ELITE_GLOBAL_MAPPER", str(tiny_models.global_mapper))
    patch.setenv("ELITE_LOCAL_MAPPER", str(tiny_models.local_mapper))
    patch.setenv("ELITE_DEVICE", "cpu")
    patch.setenv("ELITE_EVAL_CLIP_MODEL", str(metric_models.clip))
    patch.setenv("ELITE_EVAL_DINO_MODEL", str(metric_models.dino))


@pytest.fixture(autouse=True)
def environment(monkeypatch, tiny_models, tmp_path, metric_models):
    set_environment(monkeypatch, tiny_models, metric_models, tmp_path / "library")


def run(app, *args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result


@pytest.fixture(scope="module")
def baseline(app, pictures, tiny_models, metric_models, tmp_path_factory):
    """One run over two pictures and two prompts: (its CLI result, its output folder)."""
    (cat, mug), prompts = pictures
    out = tmp_path_factory.mktemp("baseline") / "run"
    with pytest.MonkeyPatch.context() as patch:
        set_environment(patch, tiny_models, metric_models, out.parent / "library")
        result = run(app, cat, mug, "--prompts", prompts, *FAST, "--class-word", "cat=cat", "-o", out)
    return result, out


def test_whole_command_table_json_images_and_contact_sheet(app, pictures, tmp_path, baseline):
    (cat, mug), prompts = pictures
    result, out = baseline
    assert result.exit_code == 0, result.output
    for text in ("CLIP-T", "CLIP-I", "DINO", "cat", "mug", "overall", "class word"):
        assert text in result.stdout

    data = json.loads((out / "results.json").read_text())
    assert data["format"] == "elite-eval/1" and data["complete"] is True
    assert list(data["concepts"]) == ["cat", "mug"]
    cat_result = data["concepts"]["cat"]
    assert [image["prompt"] for image in cat_result["images"]] == ["a <cat> on the beach", "a red <cat>"]
    assert [image["clip_t_text"] for image in cat_result["images"]] == ["a cat on the beach", "a red cat"]
    assert [image["clip_t_text"] for image in data["concepts"]["mug"]["images"]] == ["a on the beach", "a red"]
    for concept in data["concepts"].values():
        for metric in ("clip_t", "clip_i", "dino"):
            values = [image[metric] for image in concept["images"]]
            assert concept[metric]["count"] == 2
            assert concept[metric]["mean"] == pytest.approx(np.mean(values))
            assert concept[metric]["std"] == pytest.approx(np.std(values, ddof=1))
            assert all(-1.0 <= value <= 1.0 for value in values)
        for image in concept["images"]:
            assert Image.open(image["path"]).size == (64, 64)
        per_prompt = {entry["prompt"]: entry for entry in concept["prompts"]}
        for image in concept["images"]:  # one image per prompt: the prompt's mean is that image's score
            assert per_prompt[image["prompt"]]["dino"] == {"mean": image["dino"], "std": None, "count": 1}
        sheet = Image.open(concept["contact_sheet"])
        assert sheet.width > 2 * 256 and sheet.height > 2 * 256  # source + 1 image, 2 prompt rows
    overall_clip_i = [image["clip_i"] for concept in data["concepts"].values() for image in concept["images"]]
    assert data["overall"]["clip_i"]["mean"] == pytest.approx(np.mean(overall_clip_i))
    assert data["overall"]["clip_i"]["count"] == 4
    assert data["settings"]["steps"] == 2 and data["models"]["clip_model"].endswith("clip")

    # --json prints the report; a seed fixes the images whatever the batching, so the scores too.
    again = run(app, cat, mug, "--prompts", prompts, *FAST, "--class-word", "cat=cat", "-o", tmp_path / "again",
                "--batch-size", "1", "--json")
    assert again.exit_code == 0, again.output
    printed = json.loads(again.stdout)
    for metric in ("clip_t", "clip_i", "dino"):
        assert printed["overall"][metric]["mean"] == pytest.approx(data["overall"][metric]["mean"], abs=1e-4)
    assert printed["settings"]["batch_size"] == 1


def test_compare_two_runs(app, pictures, tmp_path, baseline):
    (cat, mug), prompts = pictures
    first, second = baseline[1], tmp_path / "b"
    result = run(app, cat, mug, "--prompts", prompts, *FAST, "--class-word", "cat=cat", "--lambda", "0.0", "-o", second)
    assert result.exit_code == 0, result.output

    result = run(app, "--compare", first / "results.json", second / "results.json")
    assert result.exit_code == 0, result.output
    for text in ("CLIP-T", "→", "lambda", "overall"):
        assert text in result.stdout
    assert "llambda" not in result.stdout  # the user's word for --lambda

    as_json = json.loads(run(app, "--compare", first / "results.json", second / "results.json", "--json").stdout)
    a = json.loads((first / "results.json").read_text())
    b = json.loads((second / "results.json").read_text())
    for metric in ("clip_t", "clip_i", "dino"):
        row = as_json["rows"]["cat"][metric]
        assert row["first"] == a["concepts"]["cat"][metric]["mean"]
        assert row["delta"] == pytest.approx(b["concepts"]["cat"][metric]["mean"] - a["concepts"]["cat"][metric]["mean"])
    assert as_json["overall"]["dino"]["second"] == b["overall"]["dino"]["mean"]
    assert as_json["warnings"] == []
    assert {"setting": "lambda", "first": 0.8, "second": 0.0} in as_json["differences"]
    # A results.json an earlier version wrote says `llambda`: compared under the same word.
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**a, "settings": {("llambda" if key == "lambda" else key): value
                                                 for key, value in a["settings"].items()}}))
    mixed = json.loads(run(app, "--compare", old, second / "results.json", "--json").stdout)
    assert {"setting": "lambda", "first": 0.8, "second": 0.0} in mixed["differences"]


def test_compare_prints_user_words_for_missing_values(app, baseline, tmp_path):
    first = baseline[1] / "results.json"
    edited = json.loads(first.read_text())
    edited["concepts"]["cat"]["class_word"] = None  # a run without --class-word cat=cat
    del edited["settings"]["scheduler"]  # a field an older results.json may lack
    second = tmp_path / "results.json"
    second.write_text(json.dumps(edited))
    result = CliRunner().invoke(app, ["eval", "--compare", str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert "None" not in result.output and "null" not in result.output
    assert "Warning: <cat> has class word 'cat' in A and no class word in B" in result.stderr


def test_dreambench_uses_the_class_words_templates(app, pictures, tmp_path):
    (cat, _), _ = pictures
    # All 25 prompts in one batch: the tiny UNet's cost is per call, not per image.
    # Guidance 1 skips the unconditional branch, halving the UNet batch.
    result = run(app, cat, "--dreambench", "-n", "1", "--steps", "1", "--guidance", "1", "--width", "64", "--height", "64",
                 "--batch-size", "25", "--class-word", "cat=cat", "-o", tmp_path / "db", "--json")
    assert result.exit_code == 0, result.output
    images = json.loads(result.stdout)["concepts"]["cat"]["images"]
    assert len(images) == 25
    assert images[10]["prompt"] == "a <cat> wearing a red hat"  # live-object list for a cat
    assert images[10]["clip_t_text"] == "a cat wearing a red hat"


@pytest.mark.parametrize("arguments, message", [
    ([], "name at least one concept"),
    (["{cat}", "--prompts", "{prompts}", "--dreambench"], "either --prompts FILE or --dreambench"),
    (["{cat}", "--class-word", "cat"], "NAME=WORD"),
    (["{cat}", "-n", "0"], "-n must be at least 1"),
    (["{cat}", "--compare", "{prompts}", "{prompts}"], "no concept names"),
    (["--compare", "{prompts}", "{prompts}"], "is not JSON"),
    (["{cat}", "{cat}", "--prompts", "{prompts}", *FAST], "named twice"),
    (["{cat}", "--prompts", "{prompts}", "--class-word", "dog=dog"], "not among the concepts"),
    (["no-such-picture.png", "--prompts", "{prompts}"], "does not exist"),
])
def test_errors(app, pictures, tmp_path, arguments, message):
    (cat, _), prompts = pictures
    arguments = [argument.format(cat=cat, prompts=prompts) for argument in arguments]
    result = run(app, *arguments, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)


@pytest.mark.parametrize("arguments, message", [
    (["--width", "65"], "--width must be a positive multiple of 8"),
    (["--height", "4096"], "--height must be at most 2048"),
    (["--lambda", "nan"], "--lambda must be a number from 0 to 2"),
    (["--lambda", "7"], "--lambda must be a number from 0 to 2"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--scheduler", "nope"], "--scheduler 'nope' is not supported"),
])
def test_bad_settings_are_refused_before_models_load_and_leave_no_folder(app, pictures, tmp_path, arguments, message):
    (cat, _), prompts = pictures
    fast = ["-n", "1", "--steps", "2", "--width", "64", "--height", "64"]
    result = run(app, cat, "--prompts", prompts, *fast, *arguments, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_a_template_with_a_bracket_typo_is_refused(app, pictures, tmp_path):
    (cat, _), _ = pictures
    templates = tmp_path / "templates.txt"
    templates.write_text("a {} on the <beach\n")
    result = run(app, cat, "--prompts", templates, *FAST, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert "has a '<' without a closing '>'" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_library_concepts(app, pictures, tmp_path, loaded_models):
    """A library concept: tensors from ConceptStore.load, source picture and class word from its record."""
    store_module = pytest.importorskip("elite_cli.library")
    from elite_cli.model.encoder import Encoder

    (cat, _), prompts = pictures
    store = store_module.ConceptStore(tmp_path / "library")
    store.add(Encoder(loaded_models).encode(cat), name="kitty", image_path=cat, tags=["pets", "class-cat"])
    result = run(app, "kitty", "--prompts", prompts, *FAST, "-o", tmp_path / "lib", "--json")
    assert result.exit_code == 0, result.output
    concept = json.loads(result.stdout)["concepts"]["kitty"]
    assert concept["class_word"] == "cat"
    assert concept["images"][0]["clip_t_text"] == "a cat on the beach"

    # --class-word wins over the tag.
    result = run(app, "kitty", "--prompts", prompts, *FAST, "--class-word", "kitty=kitten", "-o", tmp_path / "lib2", "--json")
    assert json.loads(result.stdout)["concepts"]["kitty"]["images"][0]["clip_t_text"] == "a kitten on the beach"

    # Without its source picture a concept cannot be compared with it.
    from elite_cli.errors import LibraryError

    (_, mug), _ = pictures
    store.add(Encoder(loaded_models).encode(mug), name="nosource", image_path=mug, keep_sources=False)
    result = run(app, "nosource", "--prompts", prompts, *FAST, "-o", tmp_path / "lib3")
    assert isinstance(result.exception, LibraryError) and "no source picture" in str(result.exception)


def test_concepts_from_other_mappers_are_refused(loaded_models, pictures):
    from elite_cli.model.encoder import Encoder
    from elite_cli.evaluation.runner import Subject, check_fresh

    (cat, _), _ = pictures
    fresh = Encoder(loaded_models).encode(cat)
    check_fresh([Subject("cat", fresh, cat)], loaded_models)
    stale = dataclasses.replace(fresh, provenance={**fresh.provenance, "local_mapper": "sha256:" + "0" * 64})
    with pytest.raises(InputError, match="--allow-stale"):
        check_fresh([Subject("cat", fresh, cat), Subject("old", stale, cat)], loaded_models)


def test_importing_the_command_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, elite_cli.commands.evaluate; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent).stdout
    assert output.strip() == "[]"


def test_an_interrupted_run_keeps_the_finished_concepts(loaded_models, metric_models, pictures, tmp_path):
    from elite_cli.model.encoder import Encoder
    from elite_cli.evaluation.metrics import load_metric_models
    from elite_cli.evaluation.runner import EvalRunner, EvalSettings, Subject

    (cat, _), _ = pictures
    concept = Encoder(loaded_models).encode(cat)
    subjects = [Subject("first", concept, cat), Subject("second", concept, cat)]

    def stop_in_the_second_concept(done, total, label):
        if "<second>" in label:
            raise KeyboardInterrupt

    runner = EvalRunner(loaded_models, load_metric_models(str(metric_models.clip), str(metric_models.dino)))
    settings = EvalSettings(prompts=("a {} on the beach",), num_images=1, steps=1, width=64, height=64)
    with pytest.raises(KeyboardInterrupt):
        runner.run(subjects, settings, tmp_path / "out", progress=stop_in_the_second_concept)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["complete"] is False
    assert list(saved["concepts"]) == ["first"] and saved["overall"]["dino"]["count"] == 1


@pytest.mark.parametrize("template, message", [
    ("<mug> next to {}", "prompt template '<mug> next to {}' names <mug>; a template holds only {}"),
    ("a {} and a {}", "must hold exactly one {}"),
    ("a photo of a dog", "must hold exactly one {}"),
])
def test_templates_name_only_the_evaluated_concept(app, pictures, tmp_path, template, message):
    (cat, _), _ = pictures
    templates = tmp_path / "templates.txt"
    templates.write_text(f"a {{}} on the beach\n{template}\n")
    result = run(app, cat, "--prompts", templates, *FAST, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, message", [
    (["cat=cat=x"], "--class-word 'cat=cat=x' is not NAME=WORD"),
    (["cat=cat", "cat=dog"], "--class-word gives 'cat' two class words ('cat' and 'dog')"),
])
def test_bad_class_words(app, pictures, tmp_path, values, message):
    (cat, _), prompts = pictures
    flags = [part for value in values for part in ("--class-word", value)]
    result = run(app, cat, "--prompts", prompts, *FAST, *flags, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert message in str(result.exception)


def test_output_folders_that_cannot_hold_the_results(app, pictures, tmp_path, monkeypatch):
    (cat, _), prompts = pictures
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for folder, message in ((used, f"output folder '{used}' is not empty; pass a new or empty folder"),
                            (blocker / "out", f"output folder '{blocker / 'out'}' cannot be made: '{blocker}' is a file")):
        result = run(app, cat, "--prompts", prompts, *FAST, "-o", folder)
        assert isinstance(result.exception, InputError), result.output
        assert message in str(result.exception)
    assert (used / "results.json").read_text() == "{}"
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw))
    result = run(app, cat, "--prompts", prompts, *FAST, "-o", locked / "out")
    assert isinstance(result.exception, InputError), result.output
    assert f"output folder '{locked / 'out'}' is not writable ('{locked}' is not)" in str(result.exception)
    assert not (locked / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda report: report.pop("concepts"), "is a damaged elite eval results file (no valid concepts)"),
    (lambda report: report.update(overall=[1]), "is a damaged elite eval results file (no valid overall)"),
    (lambda report: report["concepts"].update(cat=3), "is a damaged elite eval results file (no valid concepts.cat)"),
])
def test_compare_refuses_damaged_results_files(app, baseline, tmp_path, edit, message):
    first = baseline[1] / "results.json"
    edited = json.loads(first.read_text())
    edit(edited)
    second = tmp_path / "results.json"
    second.write_text(json.dumps(edited))
    result = run(app, "--compare", first, second)
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception) == f"'{second}' {message}; pass the results.json an `elite eval` run wrote."


def test_compare_of_a_folder_names_its_results_file(app, baseline):
    folder = baseline[1]
    result = run(app, "--compare", folder, folder / "results.json")
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception) == f"results file '{folder}' is a folder; pass '{folder / 'results.json'}'."


def test_compare_shows_a_hand_edited_metric_as_missing(app, baseline, tmp_path):
    first = baseline[1] / "results.json"
    edited = json.loads(first.read_text())
    edited["concepts"]["cat"]["dino"] = 0.5  # a number where {"mean": ...} belongs
    second = tmp_path / "results.json"
    second.write_text(json.dumps(edited))
    result = run(app, "--compare", first, second, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"]["cat"]["dino"]["second"] is None


def test_templates_longer_than_the_token_window(app, pictures, tmp_path):
    (cat, _), _ = pictures
    words = " ".join(f"w{i}" for i in range(100))
    templates = tmp_path / "templates.txt"
    templates.write_text(f"a {{}} on the beach\n{words} {{}}\n")
    result = run(app, cat, "--prompts", templates, *FAST, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert "token window and <cat> falls outside it" in str(result.exception)
    assert not (tmp_path / "out").exists()

    templates.write_text(f"{{}} {words}\n")
    result = CliRunner().invoke(app, ["eval", str(cat), "--prompts", str(templates), *FAST, "-o", str(tmp_path / "cut")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "longer than" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: prompt '<cat> w0 w1"), result.stderr


def test_a_prompts_folder_is_named_as_a_folder(app, pictures, tmp_path):
    (cat, _), _ = pictures
    result = run(app, cat, "--prompts", tmp_path, *FAST, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception).startswith(f"prompts file '{tmp_path}' is a folder; pass a text file")


def test_a_picture_file_that_does_not_decode_fails_before_the_models_load(app, pictures, tmp_path, monkeypatch):
    (cat, _), prompts = pictures
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")

    def no_models(*args, **kwargs):
        raise AssertionError("models loaded before the pictures were checked")

    monkeypatch.setattr("elite_cli.model.loading.load_models", no_models)
    result = run(app, cat, broken, "--prompts", prompts, *FAST, "-o", tmp_path / "out")
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception) == f"image '{broken}' is not an image PIL can read; use PNG, JPEG or WebP."
    assert not (tmp_path / "out").exists()
