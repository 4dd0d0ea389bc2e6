"""img2img, inpainting and ControlNet (issue 23) on the tiny models.

Without a concept, elite's image must be diffusers' own pipeline's image, pixel for pixel, once
that pipeline's UNet cross-attention to_k/to_v carry the global mapper's copies (ELITE replaces
them for all text). The ControlNet is a tiny random one made with `ControlNetModel.from_unet`,
saved to a folder and named through the user's setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels

SIZE, STEPS, SEED, GUIDANCE, PROMPT = 64, 4, 3, 5.0, "a red cat"
FAST = ("--steps", str(STEPS), "--width", str(SIZE), "--height", str(SIZE), "--seed", str(SEED))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / "sofa.png")
    region = np.zeros((SIZE, SIZE), np.uint8)
    region[16:48, 8:40] = 255
    Image.fromarray(region).save(folder / "spot.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(folder / "empty.png")
    Image.fromarray(np.kron(region, np.ones((2, 2), np.uint8))).save(folder / "spot-twice.png")  # same aspect ratio
    Image.fromarray(np.zeros((SIZE, SIZE * 2), np.uint8) + 255).save(folder / "wide.png")
    (folder / "notes.png").write_text("not a picture")
    return {path.stem: path for path in folder.iterdir()}


def random_controlnet(base_model: Path, destination: Path, **config) -> Path:
    """A tiny random ControlNet made with diffusers' `ControlNetModel.from_unet`, from a UNet with
    the base UNet's config changed by `config` (e.g. another cross-attention width)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(5)
    unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(base_model, subfolder="unet"), **config})
    ControlNetModel.from_unet(unet).save_pretrained(destination)
    return destination


@pytest.fixture(scope="module")
def tiny_modes(tiny_models, tmp_path_factory):
    """elite_cli.model.tiny_modes: two ControlNets, a DPT depth model and a 9-channel inpainting model."""
    from elite_cli.model.tiny_modes import build_tiny_mode_models

    return build_tiny_mode_models(tmp_path_factory.mktemp("tiny-modes"), tiny_models.base_model)


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_modes) -> Path:
    return tiny_modes.controlnet_canny


def diffusers_pipeline(cls, tiny_models, loaded_models, **components):
    """diffusers' own pipeline from the same folder, with the global mapper's to_k/to_v in attn2."""
    from diffusers import LMSDiscreteScheduler

    from elite_cli.model.attention import cross_attention_modules
    from elite_cli.model.mappers import module_key

    pipeline = cls.from_pretrained(str(tiny_models.base_model), safety_checker=None, requires_safety_checker=False,
                                   **components)
    for name, module in cross_attention_modules(pipeline.unet).items():
        to_k, to_v = loaded_models.global_mapper.key_value(module_key(name))
        module.to_k.load_state_dict(to_k.state_dict())
        module.to_v.load_state_dict(to_v.state_dict())
    # The reference's LMS set-up, as elite's `--scheduler lms` builds it.
    pipeline.scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                              num_train_timesteps=1000)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def elite_image(mode_options: dict, **settings) -> np.ndarray:
    """One image through the user's API (Session.generate: PNG and history row written)."""
    from elite_cli.api import Session

    with Session(**settings) as session:
        result = session.generate(PROMPT, seed=SEED, steps=STEPS, guidance=GUIDANCE, width=SIZE, height=SIZE,
                                  **mode_options)
    return np.asarray(result.images[0].open().convert("RGB"), dtype=np.int16)


CASES = {
    "img2img": (dict(init_image="sofa", strength=0.6), "StableDiffusionImg2ImgPipeline",
                dict(image="sofa", strength=0.6)),
    "inpaint": (dict(inpaint="sofa", region="spot"), "StableDiffusionInpaintPipeline",
                dict(image="sofa", mask_image="spot", strength=1.0)),
    "inpaint-strength": (dict(inpaint="sofa", region="spot", strength=0.75), "StableDiffusionInpaintPipeline",
                         dict(image="sofa", mask_image="spot", strength=0.75)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_modes_equal_diffusers_pipelines(case, use_tiny_models, tiny_models, loaded_models, pictures):
    import diffusers

    ours_options, pipeline_name, theirs_options = CASES[case]
    ours = elite_image({key: pictures[value] if isinstance(value, str) else value for key, value in ours_options.items()})
    pipeline = diffusers_pipeline(getattr(diffusers, pipeline_name), tiny_models, loaded_models)
    inputs = {key: Image.open(pictures[value]) if isinstance(value, str) else value for key, value in theirs_options.items()}
    extra = dict(height=SIZE, width=SIZE) if "mask_image" in inputs else {}
    theirs = pipeline(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, **inputs, **extra,
                      generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    theirs = np.asarray(theirs, dtype=np.int16)
    assert ours.std() > 5  # a picture, not a blank
    assert np.abs(ours - theirs).max() == 0  # measured: 0/255 for each case
    # And the comparison can fail: another seed gives another picture.
    other = pipeline(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, **inputs, **extra,
                     generator=torch.Generator("cpu").manual_seed(SEED + 1)).images[0]
    assert np.abs(ours - np.asarray(other, dtype=np.int16)).max() > 10


def test_controlnet_canny_equals_diffusers(use_tiny_models, tiny_models, loaded_models, pictures, tiny_controlnet,
                                           monkeypatch):
    import diffusers

    from elite_cli.model.mode_options import build_image_mode
    from elite_cli.model.modes import control_map

    monkeypatch.setenv("ELITE_CONTROLNET_CANNY", str(tiny_controlnet))
    ours = elite_image(dict(control=[f"canny={pictures['sofa']}"]))
    mode = build_image_mode(control=[f"canny={pictures['sofa']}"], settings={"controlnet_canny": str(tiny_controlnet)})
    edges = control_map(mode.controls[0], loaded_models, SIZE, SIZE)
    assert 0.05 < (np.asarray(edges) > 0).mean() < 0.6  # edges, not an empty or a full map
    controlnet = diffusers.ControlNetModel.from_pretrained(tiny_controlnet)
    pipeline = diffusers_pipeline(diffusers.StableDiffusionControlNetPipeline, tiny_models, loaded_models,
                                  controlnet=controlnet)
    theirs = pipeline(PROMPT, image=edges, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                      generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() == 0  # measured: 0/255
    plain = elite_image({})
    assert np.abs(ours - plain).max() > 10  # the ControlNet really steers
    # The ControlNet keeps diffusers' own attention; ELITE's processors are only in the UNet.
    loaded = next(iter(__import__("elite_cli.model.modes", fromlist=["_CONTROLNETS"])._CONTROLNETS.values()))
    assert {type(processor).__name__ for processor in loaded.attn_processors.values()} == {"AttnProcessor2_0"}


@pytest.fixture(scope="module")
def cat_concept(loaded_models):
    from elite_cli.model.encoder import Encoder

    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    return Encoder(loaded_models).encode(picture)


@pytest.mark.parametrize("mode_name", ["plain", "img2img", "inpaint", "control"])
def test_local_injection_reaches_every_cross_attention_in_every_mode(mode_name, loaded_models, cat_concept, pictures,
                                                                     tiny_controlnet):
    """lambda > 0: the one local-injection code path (EliteCrossAttnProcessor) runs in every UNet
    cross-attention layer at every step, whatever the mode; the ControlNet's layers never see it."""
    from elite_cli.model.attention import cross_attention_modules
    from elite_cli.model.generator import Generator, Job
    from elite_cli.model.mode_options import build_image_mode
    from elite_cli.model.modes import prepare_mode

    options = {"plain": {}, "img2img": dict(init_image=pictures["sofa"], strength=0.5),
               "inpaint": dict(inpaint=pictures["sofa"], region=pictures["spot"]),
               "control": dict(control=[f"canny={pictures['sofa']}"])}[mode_name]
    mode = build_image_mode(**options, settings={"controlnet_canny": str(tiny_controlnet)})
    prepared = prepare_mode(mode, loaded_models, SIZE, SIZE) if mode is not None else None
    generator = Generator(loaded_models)
    injections = []
    make_injection = generator.local_injection

    def recording(*args, **kwargs):
        injection = make_injection(*args, **kwargs)
        injection.local_values = []  # every cross-attention layer that injects appends to it
        injections.append(injection)
        return injection

    generator.local_injection = recording
    steps = {"img2img": STEPS // 2}.get(mode_name, STEPS)
    generator.generate_batch([Job("<cat> on the beach", SEED)], {"cat": cat_concept}, steps=STEPS, width=SIZE,
                             height=SIZE, llambda=0.8, mode=prepared)
    layers = len(cross_attention_modules(loaded_models.unet))
    assert layers > 0 and len(injections) == 1
    assert len(injections[0].local_values) == layers * steps


def test_inpainting_keeps_the_known_region_as_diffusers_does(loaded_models, pictures):
    """The known region's final latents are the picture's own VAE sample for that seed, exactly;
    only the VAE decoder (whose receptive field crosses the region's edge) changes its pixels."""
    from elite_cli.model.generator import Generator, Job
    from elite_cli.model.mode_options import build_image_mode
    from elite_cli.model.modes import prepare_mode

    mode = build_image_mode(inpaint=pictures["sofa"], region=pictures["spot"])
    prepared = prepare_mode(mode, loaded_models, SIZE, SIZE)
    vae = loaded_models.vae
    decoded = []
    hook = vae.post_quant_conv.register_forward_pre_hook(lambda module, inputs: decoded.append(inputs[0].clone()))
    try:
        Generator(loaded_models).generate_batch([Job(PROMPT, SEED)], {}, steps=STEPS, width=SIZE, height=SIZE,
                                                mode=prepared)
    finally:
        hook.remove()
    final = decoded[0] * vae.config.scaling_factor
    with torch.no_grad():
        generator = torch.Generator("cpu").manual_seed(SEED)
        picture = vae.encode(prepared.source).latent_dist.sample(generator) * vae.config.scaling_factor
    known = torch.nn.functional.interpolate(prepared.mask, size=final.shape[-2:]) < 0.5
    assert known.any() and (~known).any()
    assert (final - picture).abs()[known.expand_as(final)].max() == 0
    assert (final - picture).abs()[(~known).expand_as(final)].max() > 0.1  # the region was repainted


def test_again_remakes_the_pixels_and_refuses_a_changed_source(run_cli, use_tiny_models, pictures, tmp_path):
    import shutil

    sofa, spot = tmp_path / "sofa.png", tmp_path / "spot.png"
    shutil.copy(pictures["sofa"], sofa)
    shutil.copy(pictures["spot"], spot)
    out = tmp_path / "out"
    first = run_cli("gen", PROMPT, "--inpaint", sofa, "--region", spot, "--strength", "0.75", "-o", out, "--json", *FAST)
    assert first.exit_code == 0, first.output
    (made,) = json.loads(first.stdout)
    from elite_cli.common.outputs import read_png_parameters

    mode = read_png_parameters(Path(made["path"]))["mode"]
    assert mode["inpaint"]["path"] == str(sofa.resolve()) and mode["inpaint"]["sha256"].startswith("sha256:")
    assert mode["region"]["path"] == str(spot.resolve()) and mode["strength"] == 0.75
    history = json.loads(run_cli("history", "--json").stdout)
    assert history[0]["images"][0]["parameters"]["mode"] == mode

    for again in (made["run_id"], made["path"]):
        repeated = run_cli("gen", "--again", again, "-o", out, "--json")
        assert repeated.exit_code == 0, repeated.output
        assert pixels(json.loads(repeated.stdout)[0]["path"]) == pixels(made["path"])

    files = sorted(out.iterdir())
    spot.write_bytes(pictures["spot-twice"].read_bytes())  # changed
    changed = run_cli("gen", "--again", made["run_id"], "-o", out)
    assert changed.exit_code == 1
    assert changed.stderr.count("\n") == 1 and "has changed since" in changed.stderr and str(spot.resolve()) in changed.stderr
    spot.unlink()  # gone
    gone = run_cli("gen", "--again", made["path"], "-o", out)
    assert gone.exit_code == 1 and gone.stderr.count("\n") == 1 and "is gone" in gone.stderr
    assert sorted(out.iterdir()) == files


@pytest.mark.parametrize("changed", ["sofa", "spot"])
def test_a_picture_saved_again_while_the_models_load_is_refused(changed, use_tiny_models, loaded_models, pictures,
                                                                 tmp_path):
    """The PNG names the picture by its sha256, read when the command starts; the pixels are read
    after the models load. Bytes that differ by then (saved again meanwhile; under several
    processes, another process's copy) would make an image its record misnames: one Error, nothing written."""
    import shutil

    from elite_cli.api import Session
    from elite_cli.errors import InputError

    sofa, spot = tmp_path / "sofa.png", tmp_path / "spot.png"
    shutil.copy(pictures["sofa"], sofa)
    shutil.copy(pictures["spot"], spot)

    def load_while_the_picture_is_saved_again(spec):
        # Another picture of the same kind and size: still a valid source and region.
        (tmp_path / f"{changed}.png").write_bytes(pictures["spot-twice" if changed == "spot" else "spot"].read_bytes())
        return loaded_models

    out = tmp_path / "out"
    with Session(model_loader=load_while_the_picture_is_saved_again) as session:
        with pytest.raises(InputError) as raised:
            session.generate(PROMPT, seed=SEED, steps=STEPS, width=SIZE, height=SIZE, inpaint=sofa, region=spot,
                             output_dir=out)
        assert session.history() == []
    flag = "--inpaint" if changed == "sofa" else "--region"
    assert str(raised.value).startswith(f"{flag} '{tmp_path / changed}.png' is not the picture this run recorded")
    assert not out.exists() or not any(out.iterdir())


def test_region_of_the_same_aspect_ratio_is_resized(run_cli, use_tiny_models, pictures, tmp_path):
    out = tmp_path / "out"
    result = run_cli("gen", PROMPT, "--inpaint", pictures["sofa"], "--region", pictures["spot-twice"], "-o", out,
                     "--json", *FAST)
    assert result.exit_code == 0, result.output
    same = run_cli("gen", PROMPT, "--inpaint", pictures["sofa"], "--region", pictures["spot"], "-o", out, "--json", *FAST)
    # The region at twice the size, resized (and binarised) to the image: the same region.
    assert pixels(json.loads(result.stdout)[0]["path"]) == pixels(json.loads(same.stdout)[0]["path"])


BAD = [
    (["--inpaint", "{sofa}", "--region", "{wide}"], "is 128x64 but the picture is 64x64"),
    (["--inpaint", "{sofa}", "--region", "{empty}"], "is empty"),
    (["--inpaint", "{sofa}"], "--inpaint needs --region"),
    (["--init-image", "{sofa}", "--strength", "0"], "--strength must be a number above 0 and at most 1"),
    (["--init-image", "{sofa}", "--strength", "1.5"], "--strength must be a number above 0 and at most 1"),
    (["--init-image", "{sofa}", "--strength", "nan"], "--strength must be a number above 0 and at most 1"),
    (["--init-image", "{sofa}", "--strength", "0.1"], "leaves no denoising step"),
    (["--strength", "0.5"], "--strength goes with --init-image or --inpaint"),
    (["--init-image", "{notes}"], "is not an image PIL can read"),
    (["--init-image", "{sofa}", "--inpaint", "{sofa}", "--region", "{spot}"], "pass one of them"),
    (["--control", "canny={notes}"], "is not an image PIL can read"),
    (["--control", "pose={sofa}"], "--control kind 'pose' is unknown; use one of canny, depth"),
    (["--control", "{sofa}"], "--control takes KIND=FILE"),
    (["--control", "canny={sofa}", "--control-scale", "-1"], "--control-scale must be 0 or more"),
    (["--region", "{spot}"], "go with --inpaint FILE"),
]


@pytest.mark.parametrize("arguments, expected", BAD, ids=[expected for _, expected in BAD])
def test_bad_mode_input_is_one_line_and_writes_nothing(arguments, expected, run_cli, use_tiny_models, pictures,
                                                       tmp_path, elite_home):
    out = tmp_path / "out"
    filled = [argument.format(**{name: path for name, path in pictures.items()}) for argument in arguments]
    result = run_cli("gen", PROMPT, *filled, "-o", out, *FAST)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and "nexpected" not in result.stderr
    assert not out.exists() or not any(out.iterdir())
    assert json.loads(run_cli("history", "--json").stdout or "[]") == []


def test_a_controlnet_not_for_sd1_is_refused(run_cli, use_tiny_models, tiny_models, pictures, tmp_path, monkeypatch):
    wrong = random_controlnet(tiny_models.base_model, tmp_path / "sdxl-like", cross_attention_dim=48)
    monkeypatch.setenv("ELITE_CONTROLNET_CANNY", str(wrong))
    out = tmp_path / "out"
    result = run_cli("gen", PROMPT, "--control", f"canny={pictures['sofa']}", "-o", out, *FAST)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "reads 48-wide text but the base model's is 32-wide" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("variable, kind, label, holds", [
    ("ELITE_CONTROLNET_CANNY", "canny", "canny ControlNet", "holds a UNet2DConditionModel (its _class_name) in config.json"),
    ("ELITE_CONTROLNET_DEPTH", "depth", "depth ControlNet", "holds a UNet2DConditionModel (its _class_name) in config.json"),
    ("ELITE_DEPTH_MODEL", "depth", "depth model", "holds a 'clip_vision_model' model (its model_type) in config.json"),
])
def test_a_mode_model_setting_at_a_folder_of_the_wrong_kind_is_one_line(variable, kind, label, holds, run_cli,
                                                                        use_tiny_models, tiny_models, tiny_modes,
                                                                        pictures, tmp_path, monkeypatch):
    # Issue 26 item 9 for the settings the modes added: the folder's config is read before its weights.
    wrong = Path(tiny_models.image_encoder) if variable == "ELITE_DEPTH_MODEL" else Path(tiny_models.base_model) / "unet"
    monkeypatch.setenv("ELITE_CONTROLNET_DEPTH", str(tiny_modes.controlnet_depth))  # the right one, unless tested
    monkeypatch.setenv(variable, str(wrong))
    out = tmp_path / "out"
    # A ready map for the depth ControlNet, so that the depth model (another setting) is not asked for.
    as_map = ["--control-image-is-map"] if variable == "ELITE_CONTROLNET_DEPTH" else []
    result = run_cli("gen", PROMPT, "--control", f"{kind}={pictures['sofa']}", *as_map, "-o", out, *FAST)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"Error: the {label} '{wrong}' ({variable} or `elite config set") and holds in result.stderr
    assert "nexpected" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_nine_channel_inpainting_model_equals_diffusers(use_tiny_models, tiny_models, loaded_models, pictures,
                                                         tiny_modes):
    import diffusers

    for strength in (1.0, 0.75):
        ours = elite_image(dict(inpaint=pictures["sofa"], region=pictures["spot"], strength=strength,
                                inpaint_model=str(tiny_modes.inpaint_model)))
        unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_modes.inpaint_model, subfolder="unet")
        pipeline = diffusers_pipeline(diffusers.StableDiffusionInpaintPipeline, tiny_models, loaded_models, unet=unet)
        assert pipeline.unet.config.in_channels == 9
        theirs = pipeline(PROMPT, image=Image.open(pictures["sofa"]), mask_image=Image.open(pictures["spot"]),
                          strength=strength, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                          guidance_scale=GUIDANCE, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
        assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() == 0  # measured: 0/255
    four_channels = elite_image(dict(inpaint=pictures["sofa"], region=pictures["spot"]))
    assert np.abs(ours - four_channels).max() > 10  # the named model is the one used


def test_depth_control_equals_diffusers_and_a_ready_map_gives_the_same_image(
        use_tiny_models, tiny_models, loaded_models, pictures, tiny_modes, monkeypatch, tmp_path):
    import diffusers

    from elite_cli.model.mode_options import build_image_mode
    from elite_cli.model.modes import control_map

    monkeypatch.setenv("ELITE_CONTROLNET_DEPTH", str(tiny_modes.controlnet_depth))
    monkeypatch.setenv("ELITE_DEPTH_MODEL", str(tiny_modes.depth_model))
    ours = elite_image(dict(control=[f"depth={pictures['sofa']}"]))
    mode = build_image_mode(control=[f"depth={pictures['sofa']}"],
                            settings={"controlnet_depth": str(tiny_modes.controlnet_depth),
                                      "depth_model": str(tiny_modes.depth_model)})
    depth = control_map(mode.controls[0], loaded_models, SIZE, SIZE)
    assert np.asarray(depth).std() > 20  # the depth model's map, stretched over 0-255
    pipeline = diffusers_pipeline(diffusers.StableDiffusionControlNetPipeline, tiny_models, loaded_models,
                                  controlnet=diffusers.ControlNetModel.from_pretrained(tiny_modes.controlnet_depth))
    theirs = pipeline(PROMPT, image=depth, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                      generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() == 0  # measured: 0/255
    depth.save(tmp_path / "depth-map.png")
    from_map = elite_image(dict(control=[f"depth={tmp_path / 'depth-map.png'}"], control_image_is_map=True))
    assert np.array_equal(from_map, ours)


def test_region_auto_is_the_segmenter_mask(use_tiny_models, tiny_models, pictures, tmp_path):
    from elite_cli.model import segment

    found = segment.auto_mask(segment.load_segmenter(str(tiny_models.segmenter), "cpu"),
                              Image.open(pictures["sofa"]).convert("RGB"), "the cushion")
    assert 0 < found.mean() < 1
    Image.fromarray(found.astype(np.uint8) * 255).save(tmp_path / "found.png")
    automatic = elite_image(dict(inpaint=pictures["sofa"], region="auto", region_object="the cushion"))
    by_file = elite_image(dict(inpaint=pictures["sofa"], region=tmp_path / "found.png"))
    assert np.array_equal(automatic, by_file)


def test_resume_makes_only_the_missing_image_of_an_inpainting_run(run_cli, use_tiny_models, pictures, tmp_path):
    out = tmp_path / "out"
    command = ["gen", PROMPT, "--inpaint", pictures["sofa"], "--region", pictures["spot"], "-n", "2", "-o", out, *FAST]
    first = run_cli(*command, "--json")
    assert first.exit_code == 0, first.output
    kept, removed = (Path(item["path"]) for item in json.loads(first.stdout))
    removed_pixels = pixels(removed)
    removed.unlink()
    resumed = run_cli(*command, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    (remade,) = json.loads(resumed.stdout)
    assert remade["seed"] == SEED + 1 and pixels(remade["path"]) == removed_pixels
    # Another strength is another image: --resume does not take the finished ones for it.
    other = run_cli(*command, "--strength", "0.75", "--resume", "--json")
    assert other.exit_code == 0, other.output
    assert len(json.loads(other.stdout)) == 2
