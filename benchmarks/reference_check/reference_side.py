"""The reference side of the check: the unchanged csyxwei/ELITE code on elite's tiny model set.

Runs in its own venv with the reference's pinned stack (torch, diffusers 0.11.1,
transformers 4.26.1; see README.md). Never imported by elite nor collected by pytest.

    python reference_side.py convert  --ref-code DIR --tiny DIR --out DIR
    python reference_side.py mappers  --ref-code DIR --tiny DIR --out DIR
    python reference_side.py run      --ref-code DIR --models DIR --mappers DIR --input DIR --out DIR

`convert` writes a copy of the tiny Stable Diffusion and CLIP vision folders that the old stack
loads (same weights: a slow-tokenizer folder from the same vocabulary, and the VAE's mid-block
attention keys renamed to diffusers 0.11's names). `mappers` writes reference-format
`global_mapper.pt` / `local_mapper.pt` with the reference's own `Mapper` / `MapperLocal` classes
(hidden width 1024 is fixed inside them, so elite's tiny 64-wide mappers cannot be loaded by the
reference). `run` loads everything as `inference_local.pww_load_tools` does (same patching, with
the reference's `inj_forward_text` / `inj_forward_crossattention`), prepares the picture with the
reference's own `CustomDatasetWithBG`, and calls `train_local.validation(...)`. Hooks record the
mapper outputs and the local tokens validation feeds the UNet.

Deviations from `inference_local.py`, all forced by the offline tiny set: models come from local
folders (not the hub's `openai/clip-vit-large-patch14`), run in float32 on the CPU (not float16 on
CUDA), and the mappers' input/output widths are the tiny encoders' (not 1024/768).
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PLACEHOLDER = "S"


# ---------------------------------------------------------------------------------------------
# The reference's `datasets` module needs albumentations, cv2, pandas and torchvision, none of
# which the check needs. The stub exposes the training dataset names (never used here) and the
# reference's own CustomDatasetWithBG, whose class source is executed unchanged with two tiny
# stand-ins: torchvision's ToTensor/Normalize/Compose (exact arithmetic: uint8 HWC -> float CHW
# / 255, then (x - mean) / std) and cv2.resize, which only produces `pixel_values` (the 512 px
# picture whose batch size validation reads; never the model inputs).
# ---------------------------------------------------------------------------------------------


class _ToTensor:
    def __call__(self, picture):
        array = np.array(picture)
        if array.ndim == 2:
            array = array[..., None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class _Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor):
        return tensor.sub(self.mean).div(self.std)


class _Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


def _cv2_resize(image, size, interpolation=None):
    return np.asarray(Image.fromarray(image).resize(size, resample=Image.BICUBIC))


def install_datasets_stub(ref_code: Path) -> None:
    from packaging import version
    import PIL
    from torch.utils.data import Dataset

    source = (ref_code / "datasets.py").read_text()
    tree = ast.parse(source)
    wanted = []
    for node in tree.body:
        if isinstance(node, ast.If) and "PIL_INTERPOLATION" in ast.unparse(node):
            wanted.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in ("is_image", "CustomDatasetWithBG"):
            wanted.append(node)
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    module.__dict__.update(
        version=version, PIL=PIL, Image=Image, os=__import__("os"), np=np, torch=torch, Dataset=Dataset,
        torchvision=types.SimpleNamespace(transforms=types.SimpleNamespace(
            ToTensor=_ToTensor, Normalize=_Normalize, Compose=_Compose)),
        cv2=types.SimpleNamespace(resize=_cv2_resize, INTER_CUBIC=2),
    )
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(ref_code / "datasets.py"), "exec"), module.__dict__)

    class _TrainingOnly:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the reference check stubs the training datasets")

    module.OpenImagesDataset = module.OpenImagesDatasetWithMask = _TrainingOnly
    sys.modules["datasets"] = module


def import_reference(ref_code: Path):
    # transformers probes for a `datasets` package when it is first imported: import it (and
    # diffusers, accelerate) before the stub takes that name.
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    install_datasets_stub(ref_code)
    sys.path.insert(0, str(ref_code))
    import train_local

    return train_local


# ---------------------------------------------------------------------------------------------
# convert: the tiny set in layouts the old stack reads (same weights).
# ---------------------------------------------------------------------------------------------

FIXED_IN_DIFFUSERS_0_11 = {
    "vae": {"force_upcast": True, "latents_mean": None, "latents_std": None, "mid_block_add_attention": True,
            "scaling_factor": 0.18215, "shift_factor": None, "use_post_quant_conv": True, "use_quant_conv": True},
    "unet": {"addition_embed_type": None, "addition_time_embed_dim": None, "attention_type": "default",
             "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
             "cross_attention_norm": None, "dropout": 0.0, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
             "mid_block_only_cross_attention": None, "num_attention_heads": None,
             "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0,
             "resnet_skip_time_act": False, "reverse_transformer_layers_per_block": None, "time_cond_proj_dim": None,
             "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
             "timestep_post_act": None, "transformer_layers_per_block": 1},
}
VAE_ATTENTION_RENAMES = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


def convert(tiny: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    source, target = tiny / "stable-diffusion", out / "stable-diffusion"
    if out.exists():
        shutil.rmtree(out)
    target.mkdir(parents=True)
    shutil.copytree(source / "unet", target / "unet")
    # transformers 5 saves CLIPTextModel / CLIPVisionModel weights without the inner module's
    # prefix; transformers 4.26 expects `text_model.` / `vision_model.` in front of every key.
    for folder, new_folder, prefix in ((source / "text_encoder", target / "text_encoder", "text_model."),
                                       (tiny / "clip-vision", out / "clip-vision", "vision_model.")):
        new_folder.mkdir(parents=True)
        shutil.copy(folder / "config.json", new_folder / "config.json")
        weights = load_file(folder / "model.safetensors")
        save_file({key if key.startswith(prefix) else prefix + key: tensor for key, tensor in weights.items()},
                  new_folder / "model.safetensors", metadata={"format": "pt"})

    # diffusers 0.11's AttentionBlock names its projections query/key/value/proj_attn.
    (target / "vae").mkdir()
    shutil.copy(source / "vae" / "config.json", target / "vae" / "config.json")
    renamed = {}
    for key, tensor in load_file(source / "vae" / "diffusion_pytorch_model.safetensors").items():
        if ".attentions." in key:
            for new, old in VAE_ATTENTION_RENAMES.items():
                key = key.replace(new, old)
        renamed[key] = tensor
    save_file(renamed, target / "vae" / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    # diffusers 0.11 ignores config keys it does not know; each must hold the value that matches
    # 0.11's fixed behaviour, or the two stacks would build different networks.
    for part, fixed in FIXED_IN_DIFFUSERS_0_11.items():
        config = json.loads((source / part / "config.json").read_text())
        differing = {key: config[key] for key, value in fixed.items() if key in config and config[key] != value}
        if differing:
            raise SystemExit(f"{part} config sets {differing}, which diffusers 0.11 cannot build")

    # transformers 4.26's CLIPTokenizer reads vocab.json + merges.txt (the fast tokenizer.json is
    # newer); elite_cli.model.tiny writes those files too, from the same vocabulary.
    tokenizer = target / "tokenizer"
    tokenizer.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny / "vocab" / name, tokenizer / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **special}))
    (tokenizer / "special_tokens_map.json").write_text(json.dumps(special))
    print(f"converted {tiny} -> {out}")


# ---------------------------------------------------------------------------------------------
# Loading as inference_local.pww_load_tools does.
# ---------------------------------------------------------------------------------------------


def load_models(train_local, models: Path, mappers: Path | None):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    sd = models / "stable-diffusion"
    tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    text_encoder, info_text = CLIPTextModel.from_pretrained(str(sd / "text_encoder"), output_loading_info=True)
    image_encoder, info_vision = CLIPVisionModel.from_pretrained(str(models / "clip-vision"), output_loading_info=True)
    vae, info_vae = AutoencoderKL.from_pretrained(str(sd), subfolder="vae", output_loading_info=True)
    unet, info_unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet", output_loading_info=True)
    for what, info in (("text encoder", info_text), ("vision", info_vision), ("vae", info_vae), ("unet", info_unet)):
        problems = {kind: [key for key in info.get(kind, []) if not key.endswith("position_ids")]
                    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            shown = {kind: keys[:3] + (["..."] if len(keys) > 3 else []) for kind, keys in problems.items() if keys}
            raise SystemExit(f"the reference stack loads the {what} with {shown}")

    # As pww_load_tools: the text transformer's __call__ becomes the reference's injecting forward.
    for module in text_encoder.modules():
        if module.__class__.__name__ == "CLIPTextTransformer":
            module.__class__.__call__ = train_local.inj_forward_text

    image_width = image_encoder.config.hidden_size
    text_width = text_encoder.config.hidden_size
    mapper = train_local.Mapper(input_dim=image_width, output_dim=text_width)
    mapper_local = train_local.MapperLocal(input_dim=image_width, output_dim=text_width)
    for name, module in unet.named_modules():
        if module.__class__.__name__ == "CrossAttention":
            if "attn1" in name:
                continue
            module.__class__.__call__ = train_local.inj_forward_crossattention
            shape = module.to_k.weight.shape
            mapper.add_module(f'{name.replace(".", "_")}_to_k', torch.nn.Linear(shape[1], shape[0], bias=False))
            shape = module.to_v.weight.shape
            mapper.add_module(f'{name.replace(".", "_")}_to_v', torch.nn.Linear(shape[1], shape[0], bias=False))
            mapper_local.add_module(f'{name.replace(".", "_")}_to_v', torch.nn.Linear(shape[1], shape[0], bias=False))
            mapper_local.add_module(f'{name.replace(".", "_")}_to_k', torch.nn.Linear(shape[1], shape[0], bias=False))
    if mappers is not None:
        mapper.load_state_dict(torch.load(mappers / "global_mapper.pt", map_location="cpu"))
        mapper_local.load_state_dict(torch.load(mappers / "local_mapper.pt", map_location="cpu"))
        for name, module in unet.named_modules():
            if "attn1" in name:
                continue
            if module.__class__.__name__ == "CrossAttention":
                module.add_module("to_k_global", getattr(mapper, f'{name.replace(".", "_")}_to_k'))
                module.add_module("to_v_global", getattr(mapper, f'{name.replace(".", "_")}_to_v'))
                module.add_module("to_v_local", getattr(mapper_local, f'{name.replace(".", "_")}_to_v'))
                module.add_module("to_k_local", getattr(mapper_local, f'{name.replace(".", "_")}_to_k'))
    for model in (vae, unet, text_encoder, image_encoder, mapper, mapper_local):
        model.eval()
    return vae, unet, text_encoder, tokenizer, image_encoder, mapper, mapper_local


def make_mappers(train_local, models: Path, out: Path, seed: int, local_kv_gain: float = 1.0) -> None:
    """Random reference-format mapper files, saved like the reference's save_progress (state_dict).

    local_kv_gain scales the local mapper's key/value projections: with default-initialised
    random weights the local branch barely moves a tiny UNet's image, so an image figure would
    not tell a right local injection from a wrong one.
    """
    torch.manual_seed(seed)
    _, _, _, _, _, mapper, mapper_local = load_models(train_local, models, mappers=None)
    with torch.no_grad():
        for name, parameter in mapper_local.named_parameters():
            if name.endswith(("_to_k.weight", "_to_v.weight")):
                parameter.mul_(local_kv_gain)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(mapper.state_dict(), out / "global_mapper.pt")
    torch.save(mapper_local.state_dict(), out / "local_mapper.pt")
    print(f"wrote {out / 'global_mapper.pt'} and {out / 'local_mapper.pt'} "
          f"({sum(t.numel() for t in mapper.state_dict().values()):,} and "
          f"{sum(t.numel() for t in mapper_local.state_dict().values()):,} values)")


# ---------------------------------------------------------------------------------------------
# run: CustomDatasetWithBG + validation, as inference_local's main loop.
# ---------------------------------------------------------------------------------------------


def run(train_local, args) -> None:
    import datasets  # the stub: the reference's CustomDatasetWithBG

    torch.set_grad_enabled(False)
    vae, unet, text_encoder, tokenizer, image_encoder, mapper, mapper_local = load_models(
        train_local, Path(args.models), Path(args.mappers))
    dataset = datasets.CustomDatasetWithBG(data_root=args.input, tokenizer=tokenizer, size=512,
                                           placeholder_token=PLACEHOLDER, template=args.template)
    if len(dataset) != 1:
        raise SystemExit(f"{args.input} must hold exactly one picture (and its _bg mask); found {len(dataset)}")
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)))
    batch["index"] = batch["index"].long()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"text": batch["text"][0], "placeholder_index": int(batch["index"][0]),
            "input_ids": batch["input_ids"][0].tolist(), "seed": args.seed, "steps": args.steps,
            "guidance": args.guidance, "llambda": args.llambda,
            "versions": {name: __import__(name).__version__ for name in ("torch", "diffusers", "transformers")}}
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    np.save(out / "clip_full.npy", batch["pixel_values_clip"][0].numpy())
    np.save(out / "clip_object.npy", batch["pixel_values_obj"][0].numpy())
    grid = torch.nn.functional.interpolate(batch["pixel_values_seg"], (16, 16), mode="nearest")[0, 0]
    np.save(out / "grid_mask.npy", grid.numpy())

    # Hooks record what validation computes; the arrays are written as soon as the first
    # conditional and unconditional UNet calls have happened (generation takes much longer).
    recorded: dict[str, torch.Tensor] = {}
    mapper.register_forward_hook(lambda module, inputs, output: recorded.setdefault("words", output.clone()))
    mapper_local.register_forward_hook(lambda module, inputs, output: recorded.setdefault("local_unmasked", output.clone()))

    def unet_inputs(module, inputs, kwargs):
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(inputs) > 2:
            context = inputs[2]
        if isinstance(context, dict) and "LOCAL" in context:
            recorded.setdefault("local", context["LOCAL"].clone())
            recorded.setdefault("text_context", context["CONTEXT_TENSOR"].clone())
        elif isinstance(context, dict):
            recorded.setdefault("uncond_context", context["CONTEXT_TENSOR"].clone())
        if len(recorded) == 5 and not (out / "local.npy").exists():
            for name, tensor in recorded.items():
                np.save(out / f"{name}.npy", tensor[0].float().numpy())
            print(f"reference: '{meta['text']}', placeholder index {meta['placeholder_index']}; arrays in {out}",
                  flush=True)
            if args.arrays_only:
                raise _ArraysDone

    unet.register_forward_pre_hook(unet_inputs, with_kwargs=True)
    for name in ("words", "local", "local_unmasked", "text_context", "uncond_context"):
        (out / f"{name}.npy").unlink(missing_ok=True)
    try:
        # Words, local tokens and contexts do not depend on lambda: the hooks keep the first run's.
        for llambda in args.llambda:
            image = train_local.validation(batch, tokenizer, image_encoder, text_encoder, unet, mapper, mapper_local,
                                           vae, batch["pixel_values_clip"].device, args.guidance, seed=args.seed,
                                           llambda=llambda, num_steps=args.steps)[0]
            image.save(out / f"image_lambda{llambda:g}.png")
            print(f"reference: wrote {out / f'image_lambda{llambda:g}.png'}", flush=True)
    except _ArraysDone:
        pass


class _ArraysDone(Exception):
    """Raised from the UNet hook to stop after the arrays when only they are wanted."""



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("convert", "mappers", "run"))
    parser.add_argument("--ref-code", default="/work/elite-ref", help="checkout of csyxwei/ELITE (unchanged)")
    parser.add_argument("--tiny", default="/work/refcheck-tiny", help="elite_cli.model.tiny.build_tiny_models folder")
    parser.add_argument("--models", default="/work/refcheck-tiny/reference-stack", help="output of `convert`")
    parser.add_argument("--mappers", default="/work/refcheck-tiny/mappers-h1024", help="output of `mappers`")
    parser.add_argument("--input", default="/work/refcheck-input", help="folder with X.png and X_bg.png")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--template", default="a photo of a {} on the beach")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--llambda", type=float, nargs="+", default=[0.8],
                        help="one image per value; 0 gives the image without the local branch")
    parser.add_argument("--arrays-only", action="store_true", help="stop once words and local tokens are written")
    parser.add_argument("--local-kv-gain", type=float, default=1.0,
                        help="scale of the local mapper's random key/value weights (mappers)")
    parser.add_argument("--mapper-seed", type=int, default=1234)
    args = parser.parse_args()
    if args.command == "convert":
        convert(Path(args.tiny), Path(args.out or args.models))
        return
    train_local = import_reference(Path(args.ref_code))
    if args.command == "mappers":
        make_mappers(train_local, Path(args.models), Path(args.out or args.mappers), args.mapper_seed,
                     args.local_kv_gain)
    else:
        run(train_local, args)


if __name__ == "__main__":
    main()
