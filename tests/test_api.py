"""The Python API (elite_cli/api.py) called directly, as a notebook or the web UI does: the
tiny models, a real library, real PNGs and history rows; no CLI in between."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import draw_object_picture
from elite_cli.api import Session
from elite_cli.errors import ConceptNotFound, InputError, LibraryError, NameClash
from elite_cli.common.outputs import read_png_parameters

FAST = dict(steps=2, width=64, height=64)


class CountingLoader:
    """The real loader, counting how often the session asks it for models."""

    def __init__(self):
        self.calls = 0

    def __call__(self, spec):
        from elite_cli.model.loading import load_models

        self.calls += 1
        return load_models(spec)


def refuse_to_load(spec):
    raise AssertionError("the models must not load for this call")


@pytest.fixture
def session(use_tiny_models, elite_home):
    with Session(model_loader=CountingLoader()) as opened:
        yield opened


def test_add_then_generate_loads_the_models_once_and_writes_pngs_with_history_rows(session, cat_picture, tmp_path,
                                                                                     capsys):
    stored = session.add_concept(cat_picture, name="mycat", tags=["pets"])
    assert (stored.name, stored.tags, stored.duplicate) == ("mycat", ("pets",), False)
    steps_seen = []
    saved = []
    first = session.generate("<mycat> on the beach", n=2, seed=7, output_dir=tmp_path / "out",
                             progress=lambda step, total: steps_seen.append((step, total)), on_image=saved.append, **FAST)
    second = session.generate("<mycat> in the snow", seed=9, output_dir=tmp_path / "out", **FAST)
    assert session.model_loader.calls == 1
    assert [image.seed for image in first.images] == [7, 8] and first.seeds == [7]
    assert [image.path for image in saved] == first.paths and all(path.is_file() for path in first.paths)
    assert steps_seen and steps_seen[-1][0] == steps_seen[-1][1]
    parameters = read_png_parameters(first.paths[1])
    assert (parameters["prompt"], parameters["seed"], parameters["steps"]) == ("<mycat> on the beach", 8, 2)
    assert parameters["concepts"] == {"mycat": stored.id}
    history = session.history()
    assert [run.run_id for run in history] == [second.run_id, first.run_id]
    rows = history[1].images
    assert sorted(row.output_path for row in rows) == sorted(str(path.resolve()) for path in first.paths)
    assert history[1].prompts == ["<mycat> on the beach"] and history[1].seed == 7
    assert capsys.readouterr() == ("", "")  # the API never prints


def test_repeat_makes_the_same_pixels(session, cat_picture, tmp_path):
    session.add_concept(cat_picture, name="mycat")
    made = session.generate("<mycat> on the beach", seed=3, output_dir=tmp_path / "a", **FAST)
    again = session.repeat(made.run_id[:8], output_dir=tmp_path / "b")
    from_png = session.repeat(made.paths[0], output_dir=tmp_path / "c")
    original = np.asarray(made.images[0].open())
    assert np.array_equal(original, np.asarray(again.images[0].open()))
    assert np.array_equal(original, np.asarray(from_png.images[0].open()))
    assert again.run_id != made.run_id


def test_jobs_give_each_prompt_its_own_settings(session, cat_picture, tmp_path):
    from elite_cli.api import GenerationJob

    session.add_concept(cat_picture, name="mycat")
    jobs = [GenerationJob("<mycat> on the beach", seed=1, steps=2, width=64, height=64, scheduler="ddim"),
            GenerationJob("a photo of <mycat>", seed=5, steps=3, width=64, height=128, num_images=2)]
    result = session.generate(jobs=jobs, output_dir=tmp_path / "out")
    made = [(image.prompt, image.seed, image.parameters["steps"], Image.open(image.path).size) for image in result.images]
    assert made == [("<mycat> on the beach", 1, 2, (64, 64)), ("a photo of <mycat>", 5, 3, (64, 128)),
                    ("a photo of <mycat>", 6, 3, (64, 128))]
    assert read_png_parameters(result.paths[0])["scheduler"] == "ddim"


def test_a_pil_picture_with_a_painted_mask_array_is_stored_with_its_sources(session, tmp_path):
    picture = Image.open(draw_object_picture(tmp_path / "x.png", 64)).convert("RGB")
    painted = np.zeros((64, 64), dtype=bool)
    painted[16:48, 16:48] = True
    with pytest.raises(InputError, match="needs a name"):
        session.add_concept(picture, painted)
    stored = session.add_concept(picture, painted, name="painted")
    assert stored.image_path.is_file() and stored.mask_path.is_file()
    with Image.open(stored.mask_path) as mask:
        assert np.array_equal(np.asarray(mask) > 127, painted)
    # The same picture and mask again is recognised, not stored twice.
    assert session.add_concept(picture, painted.astype(np.float32), name="painted").duplicate


def test_bad_input_fails_with_typed_errors_before_the_models_load(use_tiny_models, cat_picture, tmp_path):
    session = Session(model_loader=refuse_to_load)
    with pytest.raises(InputError, match="--steps must be at least 1"):
        session.generate("a cat", steps=0, output_dir=tmp_path / "out")
    with pytest.raises(ConceptNotFound):
        session.generate("<nobody> on the beach", output_dir=tmp_path / "out")
    with pytest.raises(InputError, match="image '.*missing.png' does not exist"):
        session.add_concept(tmp_path / "missing.png")
    with pytest.raises(InputError, match="mask is 32x32 but the image is 64x64"):
        session.add_concept(cat_picture, draw_object_picture(tmp_path / "small.png", 32))
    with pytest.raises(InputError, match="mask array has shape"):
        session.add_concept(cat_picture, np.zeros((2, 2, 2)), name="x")
    with pytest.raises(InputError, match="--resume needs the seed"):
        session.generate("a cat", resume=True)
    assert not (tmp_path / "out").exists()


def test_reading_a_missing_library_neither_creates_it_nor_fails(tmp_path):
    home = tmp_path / "nowhere"
    session = Session(home)
    assert session.concepts() == [] and session.history() == []
    with pytest.raises(LibraryError, match="there is no concept library"):
        session.rename("a", "b")
    assert not home.exists()


def test_library_operations(session, cat_picture, dog_picture, tmp_path):
    session.add_concepts([cat_picture, dog_picture], tags=["pets"])
    assert [concept.name for concept in session.concepts()] == ["mycat", "mydog"]
    assert session.stale_flags(session.concepts()) == [False, False]
    assert session.rename("mycat", "tom").name == "tom"
    assert session.tag("tom", "black").tags == ("black", "pets")
    assert session.untag("tom", "pets").tags == ("black",)
    assert [concept.name for concept in session.concepts(tag="pets")] == ["mydog"]
    exported = session.export("tom", tmp_path / "tom.elite.safetensors")
    with pytest.raises(InputError, match="--format 'png' is not one of"):
        session.export("tom", tmp_path / "tom.png", "png")
    removed = session.remove(["tom"])
    assert [item.concept.name for item in removed] == ["tom"]
    with pytest.raises(ConceptNotFound):
        session.concept("tom")
    with pytest.raises(NameClash, match="pass --name to import it under another name"):
        session.import_concept(exported.path, name="mydog")
    assert session.import_concept(exported.path).name == "tom"
    checked = session.check()
    assert checked.report.ok and checked.report.concepts == 2 and checked.repaired == []
    assert [item.changed for item in session.reencode().done] == [False, False]
    assert session.model_loader.calls == 1


def test_warnings_go_to_the_callback_or_to_python_warnings(session, cat_picture, tmp_path):
    from elite_cli.api import GenerationWarning

    session.add_concept(cat_picture, name="mycat")
    long_prompt = "<mycat> " + " ".join(["red"] * 80) + " blue"
    told = []
    session.generate(long_prompt, seed=1, output_dir=tmp_path / "out", on_warning=told.append, **FAST)
    assert len(told) == 1 and "blue" in told[0] and not told[0].startswith("Warning")
    with pytest.warns(GenerationWarning, match="blue"):
        session.generate(long_prompt, seed=1, output_dir=tmp_path / "out", **FAST)


def test_history_rows_serialise_like_the_cli_json(session, cat_picture, tmp_path):
    session.add_concept(cat_picture, name="mycat")
    session.generate(["<mycat> a", "<mycat> b"], seed=2, output_dir=tmp_path / "out", **FAST)
    (run,) = session.history()
    data = json.loads(json.dumps(run.to_dict()))
    assert data["prompts"] == ["<mycat> a", "<mycat> b"] and len(data["images"]) == 2


def test_the_readme_example_runs_as_written(use_tiny_models, elite_home, tmp_path, monkeypatch, capsys):
    import re
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    section = re.search(r"^## Python API\n(.*?)^## ", (repo / "README.md").read_text(encoding="utf-8"),
                        re.DOTALL | re.MULTILINE)
    assert section is not None, "README lacks the Python API section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.DOTALL).group(1)
    # The example's paths are relative to a checkout; its images go to ./elite-out.
    shutil.copytree(repo / "library" / "samples", tmp_path / "library" / "samples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("['chelsea'] True")
    pngs = sorted((tmp_path / "elite-out").glob("*.png"))
    assert len(pngs) == 3  # the inpainted picture and the two of the prompt
    from PIL import Image

    modes = [json.loads(Image.open(png).info["elite"]).get("mode") for png in pngs]
    assert sum(mode is not None and mode.get("inpaint") is not None for mode in modes) == 1, modes
    assert "step " in printed


def test_threads_can_share_a_session(session, cat_picture):
    """A web server's handler threads share one session: each gets its own library connection."""
    from concurrent.futures import ThreadPoolExecutor

    session.add_concept(cat_picture, name="mycat")
    with ThreadPoolExecutor(2) as pool:
        listed = list(pool.map(lambda _: [concept.name for concept in session.concepts()], range(4)))
        renamed = pool.submit(session.rename, "mycat", "tom").result()
    assert listed == [["mycat"]] * 4 and renamed.name == "tom"
    assert [concept.name for concept in session.concepts()] == ["tom"]


def test_masks_and_crops_as_elite_add_takes_them(session, cat_picture, dog_picture):
    heard, advice = [], []
    whole, = session.add_concepts([cat_picture], masks=["none"], names=["whole"], crop="object",
                                  on_mask=heard.append, on_warning=advice.append)
    assert [choice.source for choice in heard] == ["none"] and heard[0].path is None
    assert session.mask_origin("whole")["mask_source"] == "none" and whole.crop == "object"
    assert advice == []  # the whole picture: no coverage advice
    with pytest.raises(InputError, match="--object names the object"):
        session.add_concept(dog_picture, "none", name="dog", object_text="a dog")
    with pytest.raises(InputError, match="--crop 'sideways' is not a crop mode"):
        session.add_concept(dog_picture, name="dog", crop="sideways")
    assert [concept.name for concept in session.concepts()] == ["whole"]
    # Re-encoding with another crop changes the concept; its own crop again is up to date.
    assert [item.changed for item in session.reencode(["whole"], crop="auto").done] == [True]
    assert session.concept("whole").crop == "auto"
    assert [(item.changed, item.seconds) for item in session.reencode(["whole"]).done] == [(False, None)]


def test_a_picture_already_stored_is_recognised_before_the_models_load(session, cat_picture, tmp_path):
    painted = np.zeros((64, 64), dtype=bool)
    painted[8:40, 8:40] = True
    first = session.add_concept(cat_picture, name="cat")
    with_mask = session.add_concept(cat_picture, painted, name="cat-painted")
    assert session.mask_origin("cat-painted")["mask_source"] == "painted"  # not "mask file"
    # A fresh session (a new `elite add`, the UI's re-add): hashes and the recorded mapper
    # fingerprints tell, the models are never loaded.
    with Session(model_loader=refuse_to_load) as fresh:
        again = fresh.add_concept(cat_picture, name="another-name")
        assert again.duplicate and again.name == "cat" and again.id == first.id
        assert fresh.add_concept(cat_picture, painted.astype(np.float32), name="x").id == with_mask.id
        assert [concept.name for concept in fresh.concepts()] == ["cat", "cat-painted"]
        # Another crop is another concept: that one needs the models.
        with pytest.raises(AssertionError, match="must not load"):
            fresh.add_concept(cat_picture, crop="object", name="cat-object")
