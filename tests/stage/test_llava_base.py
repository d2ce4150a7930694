"""CVC's training base: LLaVA-1.5's stage-1 state composed in HF format from tiny stand-ins of its
three released parts (Vicuna, CLIP, the mlp2x_gelu projector file), and trial prompts rendered in a
selected conversation format."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoProcessor, CLIPVisionModel

from groundflow.generate.backends import ChatPrompt, HFVisionGenerator, SamplingParams
from groundflow.generate.vision import render_vision_prompts
from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.models.llava import (
    ProjectorFileError,
    build_tiny_clip_vision,
    build_tiny_llava,
    build_tiny_projector,
    compose_llava_base,
    load_llava,
    write_projector_file,
)
from groundflow.models.spec import ModelSpec
from groundflow.train.chat_formats import VICUNA_V1_CHAT_TEMPLATE, VICUNA_V1_SYSTEM
from groundflow.train.conversations import render_conversation

QUESTION = "What might the object occluded by the gray blocks be?"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    lm = build_tiny_causal_lm(root / "vicuna", seed=0, texts=[QUESTION], flavor="vicuna")
    clip = build_tiny_clip_vision(root / "clip", seed=0)
    projector = build_tiny_projector(root / "pretrain" / "mm_projector.bin", lm, clip, seed=3)
    return lm, clip, projector


@pytest.fixture(scope="module")
def base(parts, tmp_path_factory):
    lm, clip, projector = parts
    out = tmp_path_factory.mktemp("composed") / "llava-base"
    return compose_llava_base(lm={"path": str(lm)}, vision={"path": str(clip)}, projector_path=projector, out_dir=out)


def _compose(parts, projector, out):
    lm, clip, _ = parts
    return compose_llava_base(lm={"path": str(lm)}, vision={"path": str(clip)}, projector_path=projector, out_dir=out)


def test_composed_base_loads_and_runs_one_forward_with_an_image(base):
    model, processor = load_llava(ModelSpec(str(base), device="cpu"))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    prompt = render_vision_prompts(processor, [[{"role": "user", "content": QUESTION}]], [True])[0]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    n_patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == n_patches  # CLS dropped
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def _loaded_state(path) -> dict:
    model, _ = load_llava(ModelSpec(str(path), device="cpu"))
    return model.state_dict()


def test_projector_weights_equal_the_files(base, parts):
    saved = _loaded_state(base)
    original = torch.load(parts[2], weights_only=True)
    pairs = {"linear_1.weight": "0.weight", "linear_1.bias": "0.bias", "linear_2.weight": "2.weight", "linear_2.bias": "2.bias"}
    for hf_name, release_name in pairs.items():
        ours = saved[f"model.multi_modal_projector.{hf_name}"]
        theirs = original[f"model.mm_projector.{release_name}"]
        assert torch.equal(ours, theirs.to(ours.dtype)), hf_name


def test_lm_and_vision_weights_are_the_parts(base, parts):
    lm_path, clip_path, _ = parts
    saved = _loaded_state(base)
    lm = AutoModelForCausalLM.from_pretrained(lm_path).state_dict()
    vocab = lm["model.embed_tokens.weight"].shape[0]
    for name, tensor in lm.items():
        key = name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(saved[key][:vocab], tensor), name  # original rows kept, new rows appended
        else:
            assert torch.equal(saved[key], tensor), name
    vision = CLIPVisionModel.from_pretrained(clip_path).state_dict()
    assert all(torch.equal(saved[f"model.vision_tower.{k}"], v) for k, v in vision.items())


def test_tokenizer_and_vocabulary_as_llava_hf_converts_them(base, parts):
    processor = AutoProcessor.from_pretrained(base)
    model, _ = load_llava(ModelSpec(str(base), device="cpu"))
    tok = processor.tokenizer
    original = AutoModelForCausalLM.from_pretrained(parts[0]).config.vocab_size
    assert tok.convert_tokens_to_ids("<image>") == original  # appended after the LM's vocabulary
    assert tok.pad_token == "<pad>" and tok.pad_token_id == original + 1
    assert model.config.image_token_id == original and model.config.text_config.pad_token_id == original + 1
    rows = model.get_input_embeddings().num_embeddings
    assert rows % 64 == 0 and rows >= len(tok) and rows - len(tok) < 64
    assert model.config.text_config.vocab_size == rows
    assert tok.eos_token == "</s>"
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE


def test_training_render_of_the_base_is_vicuna_v1(base):
    """Training with the base's own template ("model") and with "vicuna_v1" renders one text."""
    processor = AutoProcessor.from_pretrained(base)
    conversation = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "A cup."}]
    own = render_conversation(conversation, processor)
    named = render_conversation(conversation, processor, chat_template="vicuna_v1")
    assert own.text == named.text
    image_block = "<image>" * own.text.count("<image>")
    assert own.text == f"{VICUNA_V1_SYSTEM} USER: {image_block}\n{QUESTION} ASSISTANT: A cup.</s>"


def _state(shapes: dict) -> dict:
    return {key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}


def _good_shapes(parts):
    lm = AutoModelForCausalLM.from_pretrained(parts[0]).config.hidden_size
    vision = CLIPVisionModel.from_pretrained(parts[1]).config.hidden_size
    return {
        "model.mm_projector.0.weight": (lm, vision), "model.mm_projector.0.bias": (lm,),
        "model.mm_projector.2.weight": (lm, lm), "model.mm_projector.2.bias": (lm,),
    }


def test_a_projector_of_the_wrong_shape_is_refused_naming_file_and_key(parts, tmp_path):
    shapes = _good_shapes(parts)
    lm, vision = shapes["model.mm_projector.0.weight"]
    shapes["model.mm_projector.0.weight"] = (lm, vision * 2)  # a projector for another vision tower
    path = tmp_path / "mm_projector.bin"
    torch.save(_state(shapes), path)
    with pytest.raises(ProjectorFileError, match=r"mm_projector\.bin.*'model\.mm_projector\.0\.weight'"):
        _compose(parts, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_projector_with_a_wrong_key_is_refused_naming_it(parts, tmp_path):
    shapes = _good_shapes(parts)
    shapes["model.mm_projector.1.weight"] = shapes.pop("model.mm_projector.2.weight")
    path = tmp_path / "mm_projector.bin"
    torch.save(_state(shapes), path)
    with pytest.raises(ProjectorFileError, match=r"mm_projector\.bin.*'model\.mm_projector\.1\.weight'"):
        _compose(parts, path, tmp_path / "out")


class _Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_carrying_an_object_is_refused_and_never_run(parts, tmp_path):
    marker = tmp_path / "unpickled"
    state = _state(_good_shapes(parts))
    state["model.mm_projector.0.bias"] = _Payload(marker)
    path = tmp_path / "mm_projector.bin"
    with open(path, "wb") as handle:
        torch.save(state, handle, pickle_module=pickle)
    with pytest.raises(ProjectorFileError, match=r"mm_projector\.bin.*refused"):
        _compose(parts, path, tmp_path / "out")
    assert not marker.exists()


def test_a_safetensors_projector_is_read(parts, tmp_path):
    original = torch.load(parts[2], weights_only=True)
    path = tmp_path / "mm_projector.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    out = _compose(parts, path, tmp_path / "out")
    saved = _loaded_state(out)
    weight = saved["model.multi_modal_projector.linear_2.weight"]
    assert torch.equal(weight, original["model.mm_projector.2.weight"].to(weight.dtype))


def test_write_projector_file_is_a_plain_state_dict(tmp_path):
    path = write_projector_file(tmp_path / "p.bin", vision_hidden_size=8, text_hidden_size=4, seed=0)
    state = torch.load(path, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "model.mm_projector.0.weight": (4, 8), "model.mm_projector.0.bias": (4,),
        "model.mm_projector.2.weight": (4, 4), "model.mm_projector.2.bias": (4,),
    }


# ------------------------------------------------------------ trial prompts in a selected format


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny stand-in of llava-hf/llava-1.5-7b-hf (its own template: no system sentence)."""
    path = build_tiny_llava(tmp_path_factory.mktemp("released") / "tiny-llava", seed=0, texts=[QUESTION])
    return load_llava(ModelSpec(str(path), device="cpu"))


@pytest.mark.parametrize(
    "conversation_format, expected",
    [
        ("model", f"USER: <image>\n{QUESTION} ASSISTANT:"),
        ("cvc_t1", f"USER: <image>\n{QUESTION}\nASSISTANT:"),
        ("vicuna_v1", f"{VICUNA_V1_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT:"),
    ],
)
def test_trial_prompt_renders_in_the_selected_format(released, conversation_format, expected):
    _, processor = released
    messages = [[{"role": "user", "content": QUESTION}]]
    assert render_vision_prompts(processor, messages, [True], conversation_format=conversation_format) == [expected]


def test_prefilled_answer_continues_in_the_selected_format(released):
    _, processor = released
    prompt = render_vision_prompts(
        processor, [[{"role": "user", "content": QUESTION}]], [True], ["The answer is"], conversation_format="vicuna_v1"
    )[0]
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT: The answer is"


def test_vision_generator_samples_with_its_format(released):
    model, processor = released
    generator = HFVisionGenerator(model, processor, batch_size=2, conversation_format="cvc_t1")
    image = Image.new("RGB", (48, 64), (10, 200, 30))
    prompts = [ChatPrompt(messages=[{"role": "user", "content": QUESTION}], image=image)]
    out = generator.generate(prompts, SamplingParams(max_new_tokens=3, n=2, do_sample=True, seed=0))
    assert len(out) == 1 and len(out[0]) == 2
    assert generator.describe()["conversation_format"] == "cvc_t1"
    with pytest.raises(ValueError, match="unknown conversation format"):
        HFVisionGenerator(model, processor, conversation_format="vicuna_v2")
