"""Peak GPU memory of a model job, estimated from the model's `config.json` alone.

Pure arithmetic: each function takes a config dict (as `config.json` holds it) and the job's
shapes and returns bytes, so a plan can be checked before any GPU is asked for
(`groundflow preflight`, groundflow/preflight.py). Parameter counts follow the architectures' own
layer layouts (Llama, Qwen2, LLaVA, Qwen2.5-VL, CLIP, BERT/RoBERTa, SAM, Grounding DINO); the
activation terms are upper bounds of the largest working set, not a profile, and are named so in
the breakdown. A vision-language model's activations and logits are those of its language model
over the sequence (image tokens included); its vision encoder's own working set is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
# Sampling upcasts the last position's logits to fp32 before softmax / top-p; the training loss
# is computed on fp32 logits too.
LOGIT_BYTES = 4
# The training cross-entropy's peak per logit, in backward: the fp32 log-probabilities kept for
# it, their gradient and the logits' gradient (the forward's model-dtype logits, fp32 copy and
# log-probabilities, at most 2 + 4 + 4 bytes, stay below it).
LOSS_BYTES_PER_LOGIT = 3 * LOGIT_BYTES
# Adam's fp32 master weights, m and v (4 + 4 + 4), and the bf16 gradient, per trainable parameter.
OPTIMIZER_BYTES = 12
GRADIENT_BYTES = 2
# CUDA context, cuBLAS workspaces and the caching allocator's slack: measured contexts are
# 0.5-1 GiB; the rest is fragmentation headroom.
RUNTIME_BYTES = 1 * GIB
# LLaVA-1.5's mlp2x_gelu projector: vision hidden -> text hidden -> text hidden.
PROJECTOR_LAYERS = 2
# Decoders whose q, k and v projections carry a bias (and o does not), whatever attention_bias says.
QKV_BIAS_TYPES = ("qwen2",)


class UnknownArchitecture(ValueError):
    """A config.json whose parameters this module cannot count."""


def dtype_bytes(dtype: str | None, *, on_gpu: bool = True) -> int:
    """Bytes per weight; "auto" (and no dtype) as models.spec.resolve_dtype settles it: bf16 on a
    GPU, fp32 on the CPU."""
    if dtype in (None, "auto"):
        return 2 if on_gpu else 4
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Estimate:
    """Bytes by component; `total` is their sum."""

    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def gib(self) -> dict[str, float]:
        return {name: value / GIB for name, value in self.components.items()}


# ---------------------------------------------------------------- parameter counts

def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _layer_norm(width: int) -> int:
    return 2 * width


def _encoder_block(hidden: int, intermediate: int) -> int:
    """A post-/pre-norm transformer block with biases: q, k, v, o, two norms, a two-layer MLP."""
    return 4 * _linear(hidden, hidden) + 2 * _layer_norm(hidden) + _linear(hidden, intermediate) + _linear(intermediate, hidden)


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def decoder_params(config: dict) -> int:
    """Llama-family decoder: RMSNorm, grouped-query attention, SwiGLU MLP, untied LM head unless
    `tie_word_embeddings`."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    dim = head_dim(config)
    bias = bool(config.get("attention_bias", False))
    qkv_bias = bias or config.get("model_type") in QKV_BIAS_TYPES
    attention = (_linear(hidden, heads * dim, qkv_bias) + 2 * _linear(hidden, kv_heads * dim, qkv_bias)
                 + _linear(heads * dim, hidden, bias))
    mlp = 3 * hidden * inter
    layer = attention + mlp + 2 * hidden
    head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + config["num_hidden_layers"] * layer + hidden + head


def bert_params(config: dict) -> int:
    """BERT / RoBERTa / XLM-RoBERTa: embeddings, encoder, and the masked-LM head (decoder tied to
    the embeddings) or the pooler, as `architectures` says."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    embeddings = (config["vocab_size"] + config["max_position_embeddings"] + config.get("type_vocab_size", 2)) * hidden
    embeddings += _layer_norm(hidden)
    encoder = config["num_hidden_layers"] * _encoder_block(hidden, inter)
    if any(a.endswith("ForMaskedLM") for a in config.get("architectures", [])):
        head = _linear(hidden, hidden) + _layer_norm(hidden) + config["vocab_size"]
    else:
        head = _linear(hidden, hidden)
    return embeddings + encoder + head


def vit_params(config: dict) -> int:
    """A CLIP vision tower: patch embedding, class token, positions, pre- and post-norm, blocks."""
    hidden, patch = config["hidden_size"], config["patch_size"]
    positions = (config["image_size"] // patch) ** 2 + 1
    embeddings = config.get("num_channels", 3) * patch * patch * hidden + hidden + positions * hidden
    blocks = config["num_hidden_layers"] * _encoder_block(hidden, config["intermediate_size"])
    return embeddings + 2 * _layer_norm(hidden) + blocks


def clip_text_params(config: dict) -> int:
    hidden = config["hidden_size"]
    embeddings = (config["vocab_size"] + config["max_position_embeddings"]) * hidden
    blocks = config["num_hidden_layers"] * _encoder_block(hidden, config["intermediate_size"])
    return embeddings + blocks + _layer_norm(hidden)


def clip_params(config: dict) -> int:
    vision, text = config["vision_config"], config["text_config"]
    projection = config.get("projection_dim", 512)
    return (vit_params(vision) + clip_text_params(text) + vision["hidden_size"] * projection
            + text["hidden_size"] * projection + 1)


def projector_params(vision_hidden: int, text_hidden: int) -> int:
    return _linear(vision_hidden, text_hidden) + (PROJECTOR_LAYERS - 1) * _linear(text_hidden, text_hidden)


def llava_parts(config: dict) -> dict[str, int]:
    """Parameters of a LLaVA by part: language model, vision tower, projector."""
    text, vision = config["text_config"], config["vision_config"]
    return {
        "language_model": decoder_params(text),
        "vision_tower": vit_params(vision),
        "projector": projector_params(vision["hidden_size"], text["hidden_size"]),
    }


def qwen_vision_parts(vision: dict) -> dict[str, int]:
    """Qwen2.5-VL's vision encoder: a 3-D patch embedding (temporal_patch_size frames of
    patch_size^2 pixels, no bias), blocks of RMSNorm, fused-qkv attention and a SwiGLU MLP (all with
    biases), and the patch merger (RMSNorm, then an MLP from merge_size^2 concatenated patches to
    the language model's width): {"vision_tower": embedding and blocks, "projector": merger}."""
    hidden, inter = vision["hidden_size"], vision["intermediate_size"]
    channels = vision.get("in_chans", vision.get("in_channels", 3))
    embedding = channels * vision.get("temporal_patch_size", 2) * vision["patch_size"] ** 2 * hidden
    block = (2 * hidden + _linear(hidden, 3 * hidden) + _linear(hidden, hidden)
             + 2 * _linear(hidden, inter) + _linear(inter, hidden))
    merged = hidden * vision.get("spatial_merge_size", 2) ** 2
    merger = hidden + _linear(merged, merged) + _linear(merged, vision["out_hidden_size"])
    return {"vision_tower": embedding + vision["depth"] * block, "projector": merger}


def qwen2_5_vl_parts(config: dict) -> dict[str, int]:
    """Parameters of a Qwen2.5-VL by part: language model (a Qwen2 decoder), vision tower, projector
    (the patch merger)."""
    return {"language_model": decoder_params(language_config(config)), **qwen_vision_parts(config["vision_config"])}


def vision_language_parts(config: dict) -> dict[str, int] | None:
    """A vision-language model's parameters by part (language_model, vision_tower, projector);
    None for any other model."""
    kind = config.get("model_type")
    if kind == "llava":
        return llava_parts(config)
    if kind == "qwen2_5_vl":
        return qwen2_5_vl_parts(config)
    return None


def segment_anything_config(config: dict) -> dict:
    """The HF SamModel layout of a config in segment-anything's own terms (our tiny SAM's)."""
    return {
        "model_type": "sam",
        "vision_config": {
            "hidden_size": config["encoder_embed_dim"], "num_hidden_layers": config["encoder_depth"],
            "num_attention_heads": config["encoder_num_heads"],
            "mlp_dim": int(config["encoder_embed_dim"] * config.get("encoder_mlp_ratio", 4)),
            "image_size": config["image_size"], "patch_size": config["patch_size"],
            "output_channels": config["prompt_embed_dim"], "window_size": config["encoder_window_size"],
            "global_attn_indexes": config["encoder_global_attn_indexes"],
        },
        "mask_decoder_config": {"hidden_size": config["prompt_embed_dim"], "num_hidden_layers": config["decoder_depth"],
                                "mlp_dim": config["decoder_mlp_dim"]},
    }


def sam_params(config: dict) -> int:
    """SAM: a windowed ViT image encoder with relative positions and a conv neck, the prompt
    encoder, and the two-way-transformer mask decoder."""
    vision = config["vision_config"]
    hidden, patch, layers = vision["hidden_size"], vision["patch_size"], vision["num_hidden_layers"]
    grid = vision["image_size"] // patch
    heads_dim = hidden // vision["num_attention_heads"]
    mlp = vision.get("mlp_dim") or int(hidden * vision.get("mlp_ratio", 4.0))
    window = vision.get("window_size", 14)
    global_layers = set(vision.get("global_attn_indexes", []))
    relative = sum(2 * (2 * (grid if i in global_layers else window) - 1) * heads_dim for i in range(layers))
    encoder = (3 * patch * patch * hidden + hidden + grid * grid * hidden
               + layers * _encoder_block(hidden, mlp) + relative)
    out = vision.get("output_channels", 256)
    neck = hidden * out + _layer_norm(out) + 9 * out * out + _layer_norm(out)
    decoder = config.get("mask_decoder_config", {})
    width, depth = decoder.get("hidden_size", 256), decoder.get("num_hidden_layers", 2)
    decoder_mlp = decoder.get("mlp_dim", 2048)
    # each two-way layer: self-attention, two cross-attentions (downsampled x2), an MLP, four norms
    two_way = depth * (4 * _linear(width, width) + 2 * 4 * _linear(width, width // 2) + _linear(width, decoder_mlp)
                       + _linear(decoder_mlp, width) + 4 * _layer_norm(width))
    final = 4 * _linear(width, width // 2) + _layer_norm(width)
    masks = 4  # num_multimask_outputs + 1
    heads = masks * 3 * _linear(width, width) + _linear(width, width) * 2 + _linear(width, masks)
    upscale = 2 * (4 * width * width // 4) + 2 * (width // 4)
    prompt = 4 * width + width + 3 * width * 4 + 2 * width
    return encoder + neck + two_way + final + heads + upscale + prompt


def swin_params(config: dict) -> int:
    """Swin: patch embedding, stages of windowed blocks (width doubling), patch merging between."""
    width, patch = config["embed_dim"], config.get("patch_size", 4)
    mlp_ratio = config.get("mlp_ratio", 4.0)
    total = 3 * patch * patch * width + width + _layer_norm(width)
    for stage, depth in enumerate(config["depths"]):
        total += depth * _encoder_block(width, int(width * mlp_ratio))
        window = config.get("window_size", 7)
        total += depth * (2 * window - 1) ** 2 * config["num_heads"][stage]
        if stage < len(config["depths"]) - 1:
            total += _layer_norm(4 * width) + 4 * width * 2 * width
            width *= 2
    return total


def grounding_dino_params(config: dict) -> int:
    """Grounding DINO: Swin backbone, BERT text encoder, the feature-enhancer encoder (image
    deformable self-attention, text self-attention, bi-directional fusion), the cross-modality
    decoder, and the per-level input projections."""
    d_model = config["d_model"]
    levels = config.get("num_feature_levels", 4)
    heads = config.get("encoder_attention_heads", 8)
    points = config.get("encoder_n_points", 4)
    backbone = swin_params(config["backbone_config"])
    text = bert_params({**config["text_config"], "architectures": []})
    deformable = (_linear(d_model, heads * levels * points * 2) + _linear(d_model, heads * levels * points)
                  + 2 * _linear(d_model, d_model))
    enc_ffn, dec_ffn = config.get("encoder_ffn_dim", 2048), config.get("decoder_ffn_dim", 2048)
    ffn = lambda width: _linear(d_model, width) + _linear(width, d_model) + _layer_norm(d_model)  # noqa: E731
    fusion = 4 * _linear(d_model, d_model // 2) + 2 * _linear(d_model // 2, d_model) + 2 * _layer_norm(d_model)
    encoder_layer = (deformable + _layer_norm(d_model) + ffn(enc_ffn)
                     + 4 * _linear(d_model, d_model) + _layer_norm(d_model) + ffn(enc_ffn // 2) + fusion)
    decoder_layer = (4 * _linear(d_model, d_model) + _layer_norm(d_model) + deformable + _layer_norm(d_model)
                     + 4 * _linear(d_model, d_model) + _layer_norm(d_model) + ffn(dec_ffn))
    backbone_width = config["backbone_config"]["embed_dim"] * 2 ** (len(config["backbone_config"]["depths"]) - 1)
    projections = sum(_linear(backbone_width >> (3 - i), d_model) for i in range(3)) + 9 * backbone_width * d_model
    box_heads = config.get("decoder_layers", 6) * (2 * _linear(d_model, d_model) + _linear(d_model, 4))
    return (backbone + text + config.get("encoder_layers", 6) * encoder_layer
            + config.get("decoder_layers", 6) * decoder_layer + projections + box_heads
            + _linear(config["text_config"]["hidden_size"], d_model) + config.get("num_queries", 900) * d_model)


def param_count(config: dict) -> int:
    """Parameters of the model a `config.json` describes; UnknownArchitecture for others."""
    if config.get("architecture") == "segment_anything.Sam":
        config = segment_anything_config(config)
    kind = config.get("model_type")
    if kind in ("llama", "mistral", "qwen2"):
        return decoder_params(config)
    if kind in ("llava", "qwen2_5_vl"):
        return sum(vision_language_parts(config).values())
    if kind in ("bert", "roberta", "xlm-roberta"):
        return bert_params(config)
    if kind == "clip":
        return clip_params(config)
    if kind == "clip_vision_model":
        return vit_params(config)
    if kind == "sam":
        return sam_params(config)
    if kind == "grounding-dino":
        return grounding_dino_params(config)
    raise UnknownArchitecture(f"cannot count the parameters of model_type {kind!r}")


def language_config(config: dict) -> dict:
    """The decoder's own config: LLaVA's text_config; Qwen2.5-VL's text settings, which its hub
    config.json keeps at the top level and newer saves also under text_config (which wins), as a
    Qwen2 decoder's; or the config itself."""
    kind = config.get("model_type")
    if kind == "llava":
        return config["text_config"]
    if kind == "qwen2_5_vl":
        text = {k: v for k, v in config.items() if k not in ("vision_config", "text_config")}
        text.update(config.get("text_config") or {})
        return {**text, "model_type": "qwen2"}
    return config


# ---------------------------------------------------------------- peak memory

def kv_cache_bytes(config: dict, *, sequences: int, tokens: int, dtype: int) -> int:
    """Keys and values of every layer for `sequences` sequences of `tokens` tokens."""
    text = language_config(config)
    kv_heads = text.get("num_key_value_heads") or text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim(text) * dtype * sequences * tokens


def generation_memory(config: dict, *, dtype: int, batch: int, n: int, prompt_tokens: int,
                      max_new_tokens: int) -> Estimate:
    """Sampling `n` continuations of each of `batch` prompts in one generate() call.

    transformers expands every prompt n times before the prefill, so the KV cache holds
    batch x n full sequences; logits are kept for the last position only. The activation term is
    one decoder layer's working set over the expanded prefill (hidden states, q/k/v/o, the three
    SwiGLU projections)."""
    text = language_config(config)
    sequences = batch * n
    hidden, inter = text["hidden_size"], text["intermediate_size"]
    return Estimate({
        "weights": param_count(config) * dtype,
        "kv_cache": kv_cache_bytes(config, sequences=sequences, tokens=prompt_tokens + max_new_tokens, dtype=dtype),
        "logits": sequences * text["vocab_size"] * LOGIT_BYTES,
        "activations": sequences * prompt_tokens * (4 * hidden + 3 * inter) * dtype,
        "runtime": RUNTIME_BYTES,
    })


def encoder_memory(config: dict, *, dtype: int, batch: int, tokens: int, hidden: int, intermediate: int,
                   heads: int, attention_span: int | None = None) -> Estimate:
    """A forward pass (no generation) of `batch` inputs of `tokens` tokens: weights and the
    largest layer's working set (hidden states, the MLP's intermediate, one layer's attention
    scores over `attention_span` keys, all of them when None)."""
    span = tokens if attention_span is None else attention_span
    return Estimate({
        "weights": param_count(config) * dtype,
        "activations": batch * tokens * ((4 * hidden + intermediate) * dtype + heads * span * 4),
        "runtime": RUNTIME_BYTES,
    })


def lora_params(config: dict, *, rank: int, target_modules: list[str], modules_to_save: list[str] = ()) -> int:
    """Trainable parameters of LoRA on a Llama-family decoder: rank x (in + out) per adapted
    projection, plus the modules trained in full (embeddings, LM head)."""
    text = language_config(config)
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    heads = text["num_attention_heads"]
    kv = (text.get("num_key_value_heads") or heads) * head_dim(text)
    shapes = {"q_proj": (hidden, heads * head_dim(text)), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
              "o_proj": (heads * head_dim(text), hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise UnknownArchitecture(f"LoRA target modules {unknown} are not Llama projections")
    adapters = text["num_hidden_layers"] * sum(rank * sum(shapes[m]) for m in target_modules)
    full = {"embed_tokens": vocab * hidden, "lm_head": vocab * hidden}
    return adapters + sum(full.get(m, 0) for m in modules_to_save)


def loss_bytes(config: dict, *, tokens: int, dtype: int, chunk_tokens: int | None) -> int:
    """The LM loss's logits working set for `tokens` tokens (train.trainer's two paths).

    chunk_tokens None: the model's logits over every position, upcast to fp32 in the loss.
    Otherwise the head and cross-entropy run on at most `chunk_tokens` labelled tokens at a time,
    recomputed in backward; the labelled tokens' hidden states gathered for the head (at most all
    of them) and their gradient are counted with it."""
    text = language_config(config)
    if chunk_tokens is None:
        return tokens * text["vocab_size"] * LOSS_BYTES_PER_LOGIT
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
    return min(chunk_tokens, tokens) * text["vocab_size"] * LOSS_BYTES_PER_LOGIT + 2 * tokens * text["hidden_size"] * dtype


def training_memory(config: dict, *, dtype: int, trainable: int, batch: int, seq: int, zero_stage: int,
                    gpus: int, gradient_checkpointing: bool, loss_chunk_tokens: int | None = None) -> Estimate:
    """One training step on one GPU of `gpus`, under DeepSpeed ZeRO `zero_stage` (0: plain DDP).

    Stage 1 shards the optimizer state over the GPUs, stage 2 also the gradients, stage 3 also
    the weights. With gradient checkpointing each layer keeps its input hidden state, and the
    layer being recomputed holds its full working set (twice: forward and its backward);
    without, every layer holds its working set. Logits: `loss_bytes` (every position's, or a
    chunk's with `loss_chunk_tokens`)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {zero_stage}")
    text = language_config(config)
    hidden, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    tokens = batch * seq
    working_set = tokens * (4 * hidden + 3 * inter) * dtype
    if gradient_checkpointing:
        activations = layers * tokens * hidden * dtype + 2 * working_set
    else:
        activations = layers * working_set
    return Estimate({
        "weights": param_count(config) * dtype // (gpus if zero_stage >= 3 else 1),
        "gradients": trainable * GRADIENT_BYTES // (gpus if zero_stage >= 2 else 1),
        "optimizer": trainable * OPTIMIZER_BYTES // (gpus if zero_stage >= 1 else 1),
        "activations": activations,
        "logits": loss_bytes(config, tokens=tokens, dtype=dtype, chunk_tokens=loss_chunk_tokens),
        "runtime": RUNTIME_BYTES,
    })


def largest_fitting(estimate_for, limit: int, upper: int) -> int:
    """The largest batch in 1..upper whose estimate is within `limit` bytes (estimates grow with
    the batch); 0 when not even 1 fits."""
    best = 0
    low, high = 1, upper
    while low <= high:
        middle = (low + high) // 2
        if estimate_for(middle).total <= limit:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best
