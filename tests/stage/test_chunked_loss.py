"""The SFT trainer's loss at paper scale and in the original's compat form, on tiny real models.

Chunked cross-entropy (`loss_chunk_tokens`): the same summed loss, token count and gradients as the
full-logits loss on a tiny Llama-3-style LM (full fine-tuning and LoRA with modules_to_save
[embed_tokens, lm_head]) and a tiny LLaVA (image and text-only rows), while no tensor as wide as
the vocabulary ever has more rows than the chunk. Compat: `loss_averaging: micro_batch` gives each
micro-batch's token mean / accumulation steps (different gradients from the accumulated-token
average when micro-batches hold unequal label counts); `max_grad_norm: null` never clips."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from groundflow.demo import build_demo_model
from groundflow.models.llava import build_tiny_llava
from groundflow.models.spec import ModelSpec
from groundflow.train.config import SFTConfig
from groundflow.train.conversations import IGNORE_INDEX, assistant_mask_fn
from groundflow.train.data import SFTCollator, build_examples
from groundflow.train.model_prep import load_for_training, prepare_model
from groundflow.train.trainer import SFTTrainer, causal_lm_loss_sum, decoder_and_head, training_arguments

TEXTS = ["What colour is the sky?", "The sky is blue on a clear day.", "Name an animal that barks.", "A dog."]
RECORDS = [
    {"id": "long", "conversations": [{"from": "human", "value": TEXTS[0]}, {"from": "gpt", "value": TEXTS[1]},
                                     {"from": "human", "value": TEXTS[2]}, {"from": "gpt", "value": TEXTS[1] + " " + TEXTS[3]}]},
    {"id": "short", "conversations": [{"from": "human", "value": TEXTS[2]}, {"from": "gpt", "value": TEXTS[3]}]},
]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
        "modules_to_save": ["embed_tokens", "lm_head"]}
CHUNK = 3  # below every row's label count: several chunks and a partial last one


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return build_demo_model("llama3", tmp_path_factory.mktemp("models") / "tiny-llama3", seed=0)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(root / "a.png")
    return root


def load(path, config: SFTConfig):
    model, processing, vision = load_for_training(ModelSpec(str(path), device="cpu"), use_bf16=False)
    torch.manual_seed(0)
    model = prepare_model(model, config, vision=vision)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0, which leaves lora_A without a gradient to compare
                param.normal_(0, 0.02)
    return model, processing, vision


def batches(processing, records, *, vision, image_root=None, per_batch=2):
    examples, skipped = build_examples(records, processing, assistant_mask_fn(max_length=512), max_length=512,
                                       image_root=image_root, vision=vision)
    assert skipped == []
    tokenizer = processing.tokenizer if vision else processing
    collator = SFTCollator(tokenizer.pad_token_id, processor=processing if vision else None, image_root=image_root)
    items = [{"input_ids": e.input_ids, "labels": e.labels, "image": e.image} for e in examples]
    return [collator(items[i:i + per_batch]) for i in range(0, len(items), per_batch)]


def make_trainer(model, processing, config: SFTConfig, tmp_path):
    args = training_arguments(config, tmp_path, use_bf16=False, use_cpu=True, find_unused=False)
    return SFTTrainer(sft_config=config, model=model, args=args, processing_class=processing)


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    labels = batch["labels"]
    count = (labels[:, 1:] != IGNORE_INDEX).sum()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_chunked_equals_full(path, tmp_path, records, *, lora=None, image_root=None):
    config = SFTConfig(report_to="none", lora=lora)
    model, processing, vision = load(path, config)
    (batch,) = batches(processing, records, vision=vision, image_root=image_root)
    trainer = make_trainer(model, processing, config, tmp_path)
    full_loss, full_grads = loss_and_grads(trainer, batch)
    config.loss_chunk_tokens = CHUNK
    chunked_loss, chunked_grads = loss_and_grads(trainer, batch)

    # the reference: the model's own logits over the whole batch
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        reference_sum, count = causal_lm_loss_sum(logits, batch["labels"])
    assert count > 2 * CHUNK
    torch.testing.assert_close(full_loss, reference_sum / count)
    torch.testing.assert_close(chunked_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert chunked_grads.keys() == full_grads.keys() and len(full_grads) > 0
    for name, grad in full_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return full_grads


def test_chunked_loss_and_gradients_equal_the_full_logits_on_a_tiny_llama3(llama3, tmp_path):
    assert_chunked_equals_full(llama3, tmp_path, RECORDS)


def test_chunked_loss_equals_the_full_logits_under_lora_with_trained_embeddings_and_head(llama3, tmp_path):
    grads = assert_chunked_equals_full(llama3, tmp_path, RECORDS, lora=LORA)
    # the head the chunks ran is peft's trainable copy, not the frozen original
    assert any("lm_head.modules_to_save" in name for name in grads)
    assert any("embed_tokens.modules_to_save" in name for name in grads)
    assert not any(name.endswith("lm_head.original_module.weight") for name in grads)


def test_chunked_loss_and_gradients_equal_the_full_logits_on_a_tiny_llava(llava, tmp_path, image_root):
    records = [{**RECORDS[0], "image": "a.png",
                "conversations": [{"from": "human", "value": "<image>\n" + TEXTS[0]}, *RECORDS[0]["conversations"][1:]]},
               RECORDS[1]]
    grads = assert_chunked_equals_full(llava, tmp_path, records, image_root=image_root)
    assert any("multi_modal_projector" in name for name in grads)  # the image reached the loss


def test_a_fully_masked_batch_gives_zero_loss_and_zero_head_gradient_as_the_full_logits_do(llama3, tmp_path):
    config = SFTConfig(report_to="none")
    model, processing, _ = load(llama3, config)
    (batch,) = batches(processing, RECORDS, vision=None)
    batch["labels"][:] = IGNORE_INDEX
    trainer = make_trainer(model, processing, config, tmp_path)
    for chunk in (None, CHUNK):
        config.loss_chunk_tokens = chunk
        loss, grads = loss_and_grads(trainer, batch)
        assert loss.item() == 0.0
        assert grads["lm_head.weight"].abs().sum() == 0  # reached (DDP sees it used), zero


def test_decoder_and_head_are_found_through_peft(llama3):
    model, _, _ = load(llama3, SFTConfig(report_to="none", lora=LORA))
    decoder, head = decoder_and_head(model)
    base = model.get_base_model()
    assert decoder is base.model and head is base.lm_head
    assert type(head).__name__ == "ModulesToSaveWrapper"


class WidestVocabularyTensor(TorchDispatchMode):
    """Records the most rows of any tensor an op allocates whose last dimension is the vocabulary
    (logits, log-probabilities, their gradients), in forward and backward alike. Views (the LM
    head's transposed weight) share their input's memory and are not counted."""

    def __init__(self, vocabulary: int):
        super().__init__()
        self.vocabulary, self.rows = vocabulary, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and tensor.shape[-1] == self.vocabulary
                    and tensor.untyped_storage().data_ptr() not in inputs):
                self.rows = max(self.rows, tensor.numel() // self.vocabulary)
        return out


@pytest.mark.parametrize("chunk", [None, 4])
def test_no_logits_tensor_is_larger_than_the_chunk(llama3, tmp_path, chunk):
    config = SFTConfig(report_to="none", loss_chunk_tokens=chunk)
    model, processing, _ = load(llama3, config)
    (batch,) = batches(processing, RECORDS, vision=None)
    vocabulary = model.get_output_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[1] != vocabulary
    rows, width = batch["input_ids"].shape
    trainer = make_trainer(model, processing, config, tmp_path)
    watch = WidestVocabularyTensor(vocabulary)
    with watch:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=(batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss.backward()
    if chunk is None:
        assert watch.rows >= rows * (width - 1)  # the whole batch's logits
    else:
        # a chunk, or the last position of each row that the model's own forward still projects
        assert watch.rows == max(chunk, rows) and rows * width > 4 * chunk


@pytest.mark.parametrize("kind", ["llama3_lora", "llava"])
def test_training_with_activation_checkpointing_logs_the_same_losses_chunked_or_not(kind, llama3, llava, image_root, tmp_path):
    """The paper's settings end to end through train_sft: gradient checkpointing on (each decoder
    layer recomputed in backward, and each loss chunk too), LoRA with the trained embeddings and
    head for the text LM, full fine-tuning for the LLaVA; three optimizer steps."""
    import json

    from groundflow.train.sft import train_sft

    path, records, lora = llama3, RECORDS, LORA
    if kind == "llava":
        path, lora = llava, None
        records = [{**RECORDS[0], "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\n" + TEXTS[0]}, *RECORDS[0]["conversations"][1:]]}, RECORDS[1]]
    losses = {}
    for chunk in (None, CHUNK):
        config = SFTConfig(learning_rate=1e-3, max_steps=3, per_device_batch_size=2, lr_scheduler_type="constant",
                           warmup_ratio=0.0, save_steps=100, report_to="none", gradient_checkpointing=True,
                           lora=lora, loss_chunk_tokens=chunk)
        out = tmp_path / str(chunk)
        train_sft(model_spec={"path": str(path), "device": "cpu"}, records=records, image_root=image_root,
                  out_dir=out, config=config)
        losses[chunk] = [e["loss"] for e in json.loads((out / "train_summary.json").read_text())["losses"]]
    assert len(losses[None]) == 3 and losses[None][-1] < losses[None][0]  # it learns, so later steps depend on the gradients
    assert losses[CHUNK] == pytest.approx(losses[None], rel=1e-4)


# ---------------------------------------------------------------- compat: loss averaging, clipping

def token_sum_and_count(model, batch):
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    return causal_lm_loss_sum(logits, batch["labels"])


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_micro_batch_averaging_is_the_mean_of_micro_batch_means_over_accumulation(llama3, tmp_path, chunk):
    """Two micro-batches of one record each (8 and 3 labelled tokens, roughly), accumulated."""
    grads = {}
    for averaging in ("accumulated_tokens", "micro_batch"):
        config = SFTConfig(report_to="none", per_device_batch_size=1, gradient_accumulation_steps=2,
                           loss_averaging=averaging, loss_chunk_tokens=chunk)
        model, processing, _ = load(llama3, config)
        micro = batches(processing, RECORDS, vision=None, per_batch=1)
        counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro]
        assert len(micro) == 2 and counts[0] > 2 * counts[1]
        trainer = make_trainer(model, processing, config, tmp_path / averaging)
        trainer.current_gradient_accumulation_steps = 2
        model.zero_grad(set_to_none=True)
        total = torch.tensor(sum(counts))
        for batch in micro:
            trainer.training_step(model, dict(batch), num_items_in_batch=total)
        got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        model.zero_grad(set_to_none=True)
        (sum_a, n_a), (sum_b, n_b) = (token_sum_and_count(model, b) for b in micro)
        expected_loss = (sum_a + sum_b) / total if averaging == "accumulated_tokens" else (sum_a / n_a + sum_b / n_b) / 2
        expected_loss.backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
        grads[averaging] = got
    differs = [not torch.allclose(grads["accumulated_tokens"][n], grads["micro_batch"][n], rtol=1e-3, atol=1e-7)
               for n in grads["micro_batch"]]
    assert sum(differs) > len(differs) // 2


def test_max_grad_norm_null_never_clips(llama3, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from groundflow.train.sft import train_sft

    calls = []
    original = Accelerator.clip_grad_norm_

    def counting(self, parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return original(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", counting)
    spec = {"path": str(llama3), "device": "cpu"}
    # transformers still asks for the norm with max_norm inf (to log grad_norm), which scales nothing
    for norm, expected in ((1.0, [1.0, 1.0]), (None, [float("inf")] * 2)):
        calls.clear()
        config = SFTConfig(max_steps=2, per_device_batch_size=1, save_steps=100, report_to="none", max_grad_norm=norm)
        assert training_arguments(config, tmp_path, use_bf16=False, use_cpu=True, find_unused=False).max_grad_norm == (norm or 0)
        train_sft(model_spec=spec, records=RECORDS, image_root=None, out_dir=tmp_path / str(norm), config=config)
        assert calls == expected, norm


# ---------------------------------------------------------------- under DDP

def test_chunked_loss_under_two_process_ddp_trains_as_the_full_logits_in_one_process(tmp_path):
    """The paper's text setting (LoRA + trained embeddings and head, DDP) on two CPU processes: the
    loss taken from hooked hidden states and the head called outside the model's forward still
    gets DDP's gradient averaging, so it takes the steps one process takes on both micro-batches."""
    import json

    from safetensors.torch import load_file

    from groundflow.models.causal_lm import build_tiny_causal_lm
    from groundflow.train.launch import run_sft
    from groundflow.train.sft import train_sft

    qa = [("What colour is the sky?", "Blue."), ("Name an animal that barks.", "A dog barks, and so does a fox."),
          ("What is two plus two?", "Four."), ("Where does the Danube flow?", "East into the Black Sea.")]
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
               for i, (q, a) in enumerate(qa)]
    lm = build_tiny_causal_lm(tmp_path / "lm", seed=0, texts=[text for pair in qa for text in pair])
    (tmp_path / "records.json").write_text(json.dumps(records))
    train = {"learning_rate": 1e-2, "num_train_epochs": 2, "per_device_batch_size": 1, "lr_scheduler_type": "constant",
             "warmup_ratio": 0.0, "save_steps": 1000, "report_to": "none", "seed": 3, "merge_lora": True,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                      "modules_to_save": ["embed_tokens", "lm_head"]}}
    spec = {"path": str(lm), "device": "cpu"}
    ddp = run_sft(model=spec, records_path=str(tmp_path / "records.json"), image_root=None, out_dir=str(tmp_path / "ddp"),
                  train={**train, "loss_chunk_tokens": 2,
                         "accelerate_config": str(Path(__file__).resolve().parents[2] / "configs/accelerate/cpu_2proc.yaml")})
    single = train_sft(model_spec=spec, records=records, image_root=None, out_dir=tmp_path / "single",
                       config=SFTConfig.from_dict({**train, "per_device_batch_size": 2}))
    initial, trained, reference = (load_file(Path(p) / "model.safetensors") for p in (lm, ddp, single))
    moved = max((trained[k] - initial[k]).abs().max().item() for k in initial)
    apart = max((trained[k] - reference[k]).abs().max().item() for k in initial)
    assert moved > 0 and apart < 0.01 * moved, (apart, moved)
