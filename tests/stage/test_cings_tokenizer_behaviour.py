"""CINGS with the real Llama-3.1 tokenizer's behaviour, on the tiny pad-less "llama3" model: VL
stage-2 examples end each assistant turn with one <|eot_id|> and pad with <|finetune_right_pad_id|>;
trained checkpoints stop on the end-of-turn token; a configured `train.chat_template` reaches the
tokenisation cache and training accepts that cache."""
import json

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from groundflow.cings.data import training_conversation
from groundflow.cings.fixture import make_selfrag_fixture, make_vl_fixture
from groundflow.cings.labels import LabelSettings
from groundflow.cings.training import convert_records, tokenize_for_training, train_mode, vl_records, write_tokenized
from groundflow.demo import build_demo_model
from groundflow.models.llava import build_tiny_clip_vision, compose_llava
from groundflow.models.spec import ModelSpec
from groundflow.models.tokenizers import LLAMA3_CHAT_TEMPLATE
from groundflow.models.vision_families import LLAVA
from groundflow.train.conversations import IGNORE_INDEX, assistant_only_labels, to_chat_messages
from groundflow.train.data import SFTCollator
from groundflow.train.model_prep import load_for_training

SYSTEM = "You are a helpful language assistant."
FINETUNE_PAD = "<|finetune_right_pad_id|>"
TRAIN = {"max_steps": 1, "per_device_batch_size": 2, "max_length": 512, "report_to": "none", "save_steps": 5}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_demo_model("llama3", tmp_path_factory.mktemp("models") / "tiny-llama3", seed=0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cings-data")
    make_selfrag_fixture(folder, seed=0, n_records=4)
    frame, _, counts = convert_records(folder / "selfrag.jsonl", variant="multi", keep_no_retrieval=False, input_separator="\n\n")
    assert counts["out"] == 4
    return frame


def _cache(folder, records, base, train, mode="no_context"):
    table, _, counts = tokenize_for_training(
        records, model_path=str(base), train=train, settings=LabelSettings(mode), system_prompt=SYSTEM, batch_size=2
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenized(table, folder / f"{mode}.parquet")
    (folder / f"{mode}.counts.json").write_text(json.dumps(counts))
    return table, {"tokenized_path": str(folder / f"{mode}.parquet"), "tokenize_counts_path": str(folder / f"{mode}.counts.json")}


def test_vl_stage2_example_ends_each_turn_with_one_eot_and_pads_with_the_finetune_pad(tmp_path, base):
    """The chain of the pipeline: the text model as training prepares and saves it, the LLaVA
    composed from it, the stage-2 processor, one multi-turn image record."""
    assert AutoTokenizer.from_pretrained(base).pad_token is None  # as Llama-3.1-Instruct's
    model, tokenizer, _ = load_for_training(ModelSpec(str(base)), use_bf16=False)
    assert tokenizer.pad_token == FINETUNE_PAD
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    composed = compose_llava(tmp_path / "lm", build_tiny_clip_vision(tmp_path / "clip", seed=0), tmp_path / "llava", seed=0)
    _, processor, vision = load_for_training(ModelSpec(str(composed)), use_bf16=False)
    tok = processor.tokenizer
    pad_id, eot = tok.convert_tokens_to_ids(FINETUNE_PAD), tok.convert_tokens_to_ids("<|eot_id|>")
    assert vision is LLAVA and tok.pad_token_id == pad_id != eot

    make_vl_fixture(tmp_path / "vl", seed=0, n_images=1)
    record = vl_records(tmp_path / "vl" / "instruct.json", system_prompt="You are a helpful language and vision assistant.")[0]
    conversation = record["conversations"] + [{"from": "human", "value": "Is it big?"}, {"from": "gpt", "value": "It is small."}]
    ids, labels = assistant_only_labels(conversation, processor, max_length=2048)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.count("<|eot_id|>") == 5  # system, two user and two assistant turns, once each
    assert not any(a == b == eot for a, b in zip(ids, ids[1:]))
    answer_ends = [i for i, (t, label) in enumerate(zip(ids, labels)) if t == eot and label == eot]
    assert len(answer_ends) == 2 and answer_ends[-1] == len(ids) - 1
    assert all(labels[i - 1] != IGNORE_INDEX for i in answer_ends)  # the answer's last token is trained on too

    batch = SFTCollator(tok.pad_token_id)([{"input_ids": ids, "labels": labels, "id": "a"},
                                           {"input_ids": ids[:20], "labels": labels[:20], "id": "b"}])
    assert batch["input_ids"][1, 20:].eq(pad_id).all() and not batch["input_ids"].eq(eot).sum() > 2 * 5
    assert batch["labels"][1, 20:].eq(IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "eos, lora",
    [("<|eot_id|>", LORA), ("<|end_of_text|>", None)],
    ids=["instruct-tokenizer-lora-merged", "base-tokenizer-full"],
)
def test_trained_checkpoint_stops_on_the_end_of_turn_token(tmp_path, records, base, eos, lora):
    """The base's EOS is <|end_of_text|> (Llama-3.1-8B); the chat template ends turns with <|eot_id|>.
    Trained with the Instruct tokenizer (EOS <|eot_id|>) and LoRA, the merge starts again from the
    base's generation config; trained with the base's own tokenizer (EOS <|end_of_text|>), only the
    template says where a turn ends. Either way both must stop generation."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.eos_token = eos
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    train = {**TRAIN, "tokenizer": str(tmp_path / "tokenizer"), "lora": lora}
    _, cache = _cache(tmp_path / "cache", records, base, train)
    model_dir = train_mode(**cache, model={"path": str(base)}, train=train, out_dir=str(tmp_path / "train"))
    end_of_text, eot = tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert GenerationConfig.from_pretrained(base).eos_token_id == end_of_text
    saved = json.loads((model_dir / "generation_config.json").read_text())
    # (the Trainer may put the tokenizer's EOS first, so the order is not asserted)
    assert isinstance(saved["eos_token_id"], list) and sorted(saved["eos_token_id"]) == sorted([end_of_text, eot])
    assert AutoTokenizer.from_pretrained(model_dir).pad_token == FINETUNE_PAD


def test_a_configured_chat_template_reaches_the_cache_and_training_accepts_it(tmp_path, records, base):
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert tokenizer.chat_template != LLAMA3_CHAT_TEMPLATE  # the tokenizer's own writes the date block
    train = {**TRAIN, "chat_template": LLAMA3_CHAT_TEMPLATE}
    table, cache = _cache(tmp_path / "cache", records, base, train)
    first = records.iloc[0].to_dict()
    expected = tokenizer.apply_chat_template(
        to_chat_messages(training_conversation(first, "no_context", SYSTEM)), chat_template=LLAMA3_CHAT_TEMPLATE, tokenize=False
    )
    row = table.to_pylist()[0]
    assert row["id"] == first["id"]
    cached_text = tokenizer.decode(row["input_ids"], clean_up_tokenization_spaces=False)
    assert cached_text == expected and "Cutting Knowledge Date" not in cached_text

    model_dir = train_mode(**cache, model={"path": str(base)}, train=train, out_dir=str(tmp_path / "train"))
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert model_dir.is_dir() and summary["steps"] == 1 and summary["config"]["chat_template"] == LLAMA3_CHAT_TEMPLATE
    # the checkpoint renders prompts as training did (inference and vLLM read its own template)
    saved = AutoTokenizer.from_pretrained(model_dir)
    messages = to_chat_messages(training_conversation(first, "no_context", SYSTEM))
    assert saved.apply_chat_template(messages, tokenize=False) == expected

    _, own_cache = _cache(tmp_path / "own", records, base, TRAIN)  # rendered with the tokenizer's own
    with pytest.raises(ValueError, match="re-run tokenisation"):
        train_mode(**own_cache, model={"path": str(base)}, train=train, out_dir=str(tmp_path / "refused"))
