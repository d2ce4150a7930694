"""groundflow.models.memory: parameter counts and peak-memory estimates from config.json alone.

Exact arithmetic on small hand-made configs (each number worked out by hand in the comments), and
the real checkpoints' published architecture values against their published parameter counts."""

import pytest

from groundflow.models import memory
from groundflow.models.memory import GIB, RUNTIME_BYTES

# hidden 8, 2 layers, 2 heads of 4 dims, 1 KV head, SwiGLU 16, vocabulary 10
TINY = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 10}
LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000}
CLIP_L_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
              "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 336, "patch_size": 14}


def test_decoder_params_by_hand():
    # embeddings 10*8 = 80; per layer q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, MLP 3*8*16 = 384,
    # two RMSNorms 16 -> 592, two layers 1184; final norm 8; untied LM head 80
    assert memory.decoder_params(TINY) == 80 + 1184 + 8 + 80
    assert memory.decoder_params({**TINY, "tie_word_embeddings": True}) == 80 + 1184 + 8


def test_llama2_7b_has_its_published_6_74e9_parameters():
    assert memory.param_count(LLAMA2_7B) == pytest.approx(6.74e9, rel=0.01)


@pytest.mark.parametrize("name, published", [
    ("meta-llama--Llama-2-7b-chat-hf", 6.74e9),
    ("lmsys--vicuna-7b-v1.5", 6.74e9),
    ("llava-hf--llava-1.5-7b-hf", 7.06e9),
    ("meta-llama--Llama-3.1-8B", 8.03e9),
    ("FacebookAI--roberta-large", 355e6),
    ("BAAI--bge-m3", 568e6),
    ("openai--clip-vit-large-patch14-336", 428e6),
    ("facebook--sam-vit-huge", 641e6),
    ("Qwen--Qwen2.5-VL-7B-Instruct", 8.29e9),
])
def test_bundled_configs_count_their_checkpoints_published_parameters(name, published):
    from groundflow.preflight import model_config

    config, source = model_config(name.replace("--", "/"))
    assert memory.param_count(config) == pytest.approx(published, rel=0.01), source


def test_grounding_dino_base_is_counted_within_five_percent():
    # Its fusion and query-selection layers are counted approximately (the model card: 233M)
    from groundflow.preflight import model_config

    config, _ = model_config("IDEA-Research/grounding-dino-base")
    assert memory.param_count(config) == pytest.approx(233e6, rel=0.05)


def test_llava_parts_add_up_to_the_whole():
    llava = {"model_type": "llava", "text_config": LLAMA2_7B, "vision_config": CLIP_L_336}
    parts = memory.llava_parts(llava)
    # mlp2x_gelu: 1024*4096 + 4096 + 4096*4096 + 4096
    assert parts["projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert parts["vision_tower"] == pytest.approx(304e6, rel=0.01)
    assert memory.param_count(llava) == sum(parts.values())


def test_qwen2_5_vl_7b_counts_exactly_its_parameters_by_part():
    # Measured by instantiating Qwen2_5_VLForConditionalGeneration from this config on the meta
    # device (transformers 5.23): 8,292,166,656 parameters, of which the vision blocks and patch
    # embedding 631,975,680 and the patch merger 44,574,464.
    from groundflow.preflight import model_config

    config, _ = model_config("Qwen/Qwen2.5-VL-7B-Instruct")
    parts = memory.vision_language_parts(config)
    assert parts == {"language_model": 7_615_616_512, "vision_tower": 631_975_680, "projector": 44_574_464}
    assert memory.param_count(config) == 8_292_166_656
    # the text settings sit at the top level of the hub's config.json; a text_config (newer saves) wins
    assert memory.language_config(config)["hidden_size"] == 3584
    nested = {**config, "text_config": {**memory.language_config(config), "vocab_size": 1000}}
    assert memory.param_count(nested) == 8_292_166_656 - (152064 - 1000) * 3584 * 2


def test_qwen2_decoders_carry_q_k_v_biases():
    # TINY as Qwen2: q 8 + k 4 + v 4 biases per layer, no o bias: 16 x 2 layers
    assert memory.decoder_params({**TINY, "model_type": "qwen2"}) == memory.decoder_params(TINY) + 32


def test_qwen2_5_vl_7b_training_memory_by_zero_stage_and_lora():
    from groundflow.preflight import _trainable, model_config

    config, _ = model_config("Qwen/Qwen2.5-VL-7B-Instruct")
    full = _trainable(config, {"freeze_vision_tower": False})
    assert full == memory.param_count(config)
    assert _trainable(config, {"freeze_vision_tower": True, "train_projector": False}) == 7_615_616_512
    # LoRA r 64 on the seven projections of 28 layers: 28 x 64 x (in + out summed over them: 90,112)
    lora = _trainable(config, {"lora": {"r": 64, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]},
                               "train_projector": False})
    assert lora == 161_480_704

    def step(stage, trainable, gpus):
        return memory.training_memory(config, dtype=2, trainable=trainable, batch=1, seq=4096, zero_stage=stage,
                                      gpus=gpus, gradient_checkpointing=True).total / GIB

    # the paper's SFT: full, ZeRO-2 on 8 GPUs fits 80 GiB; plain DDP does not; LoRA fits one GPU
    assert step(2, full, 8) < 80 < step(0, full, 8)
    assert step(0, lora, 1) < 40


def test_an_architecture_it_cannot_count_is_an_error():
    with pytest.raises(memory.UnknownArchitecture, match="'mamba'"):
        memory.param_count({"model_type": "mamba"})


def test_kv_cache_by_hand():
    # 2 (k, v) x 2 layers x 1 KV head x 4 dims x 2 bytes x 3 sequences x 5 tokens
    assert memory.kv_cache_bytes(TINY, sequences=3, tokens=5, dtype=2) == 2 * 2 * 1 * 4 * 2 * 3 * 5


def test_llama2_7b_kv_cache_is_half_a_mebibyte_a_token():
    assert memory.kv_cache_bytes(LLAMA2_7B, sequences=1, tokens=1, dtype=2) == 512 * 1024


def test_generation_memory_by_hand():
    estimate = memory.generation_memory(TINY, dtype=2, batch=2, n=3, prompt_tokens=4, max_new_tokens=6)
    sequences = 6
    assert estimate.components == {
        "weights": 1352 * 2,
        "kv_cache": 2 * 2 * 1 * 4 * 2 * sequences * 10,
        "logits": sequences * 10 * 4,
        "activations": sequences * 4 * (4 * 8 + 3 * 16) * 2,
        "runtime": RUNTIME_BYTES,
    }
    assert estimate.total == sum(estimate.components.values())


def test_sampling_32_prompts_x_16_at_paper_shapes_does_not_fit_80_gib():
    llava = {"model_type": "llava", "text_config": {**LLAMA2_7B, "vocab_size": 32064}, "vision_config": CLIP_L_336}
    estimate = memory.generation_memory(llava, dtype=2, batch=32, n=16, prompt_tokens=576 + 128, max_new_tokens=384)
    # 512 sequences x 1088 tokens x 0.5 MiB
    assert estimate.components["kv_cache"] == 512 * 1088 * 512 * 1024
    assert estimate.total > 80 * GIB


@pytest.mark.parametrize("stage, weights, grads, optimizer", [
    (0, 1352 * 2, 100 * 2, 100 * 12),
    (1, 1352 * 2, 100 * 2, 100 * 12 // 4),
    (2, 1352 * 2, 100 * 2 // 4, 100 * 12 // 4),
    (3, 1352 * 2 // 4, 100 * 2 // 4, 100 * 12 // 4),
])
def test_zero_stages_shard_optimizer_then_gradients_then_weights(stage, weights, grads, optimizer):
    estimate = memory.training_memory(TINY, dtype=2, trainable=100, batch=2, seq=5, zero_stage=stage, gpus=4,
                                      gradient_checkpointing=True)
    tokens = 10
    assert estimate.components == {
        "weights": weights, "gradients": grads, "optimizer": optimizer,
        # one hidden state per layer kept, plus a layer's working set recomputed and back-propagated
        "activations": 2 * tokens * 8 * 2 + 2 * tokens * (4 * 8 + 3 * 16) * 2,
        # every position's logits: fp32 log-probabilities, their gradient and the logits' gradient
        "logits": tokens * 10 * 3 * 4,
        "runtime": RUNTIME_BYTES,
    }


def test_without_checkpointing_every_layer_keeps_its_working_set():
    estimate = memory.training_memory(TINY, dtype=2, trainable=100, batch=2, seq=5, zero_stage=0, gpus=1,
                                      gradient_checkpointing=False)
    assert estimate.components["activations"] == 2 * 10 * (4 * 8 + 3 * 16) * 2


def test_loss_logits_by_hand():
    # full: 10 tokens x 10 vocabulary x 12 bytes; chunks of 4: 4 x 10 x 12, plus the 10 gathered
    # hidden states of 8 (bf16) and their gradient
    assert memory.loss_bytes(TINY, tokens=10, dtype=2, chunk_tokens=None) == 10 * 10 * 12
    assert memory.loss_bytes(TINY, tokens=10, dtype=2, chunk_tokens=4) == 4 * 10 * 12 + 2 * 10 * 8 * 2
    # a chunk larger than the batch holds the batch
    assert memory.loss_bytes(TINY, tokens=3, dtype=2, chunk_tokens=4) == 3 * 10 * 12 + 2 * 3 * 8 * 2
    with pytest.raises(ValueError, match="chunk_tokens"):
        memory.loss_bytes(TINY, tokens=3, dtype=2, chunk_tokens=0)


LLAMA31_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}


def test_the_paper_batch_logits_are_tens_of_gib_whole_and_a_few_in_chunks():
    # 8 x 4096 tokens x 128256 x 12 bytes = 47 GiB; 4096-token chunks 5.9 GiB + 0.5 GiB of hidden states
    full = memory.loss_bytes(LLAMA31_8B, tokens=8 * 4096, dtype=2, chunk_tokens=None)
    assert full == 8 * 4096 * 128256 * 12 and 46 * GIB < full < 48 * GIB
    chunked = memory.loss_bytes(LLAMA31_8B, tokens=8 * 4096, dtype=2, chunk_tokens=4096)
    assert 6 * GIB < chunked < 7 * GIB
    step = dict(dtype=2, trainable=100, batch=8, seq=4096, zero_stage=0, gpus=8, gradient_checkpointing=True)
    assert memory.training_memory(LLAMA31_8B, **step).components["logits"] == full
    assert memory.training_memory(LLAMA31_8B, **step, loss_chunk_tokens=4096).components["logits"] == chunked


def test_lora_params_by_hand():
    # rank 2 on q (8 -> 8) and v (8 -> 4): 2*(8+8) + 2*(8+4) = 56 a layer, 2 layers; embeddings 80 in full
    assert memory.lora_params(TINY, rank=2, target_modules=["q_proj", "v_proj"]) == 112
    assert memory.lora_params(TINY, rank=2, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"]) == 192
    with pytest.raises(memory.UnknownArchitecture, match="qkv"):
        memory.lora_params(TINY, rank=2, target_modules=["qkv"])


def test_largest_fitting_batch():
    by_batch = lambda b: memory.Estimate({"x": 10 * b})  # noqa: E731
    assert memory.largest_fitting(by_batch, limit=45, upper=32) == 4
    assert memory.largest_fitting(by_batch, limit=5, upper=32) == 0
    assert memory.largest_fitting(by_batch, limit=10_000, upper=32) == 32


def test_auto_dtype_follows_the_device_policy():
    assert memory.dtype_bytes("auto", on_gpu=True) == 2 and memory.dtype_bytes("auto", on_gpu=False) == 4
    assert memory.dtype_bytes("fp32") == 4
    with pytest.raises(ValueError, match="int3"):
        memory.dtype_bytes("int3")
