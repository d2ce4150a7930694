"""One generation interface over local Hugging Face models and OpenAI-compatible endpoints.

Methods ask for `params.n` completions of each `ChatPrompt` and get back, in prompt order, exactly
that many strings per prompt, whichever backend answers: batched transformers generation on a
local causal LM or LLaVA, or an HTTP endpoint (OpenAI, or `vllm serve` for speed at scale).
`describe()` of the generator and of the SamplingParams is stored beside the outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, runtime_checkable

from groundflow.generate.constrained import ChoiceConstraint
from groundflow.generate.text import generate_texts, render_prompts, stop_token_ids
from groundflow.generate.vision import generate_vision_texts, render_vision_prompts

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters, always passed explicitly to the backend.

    `do_sample=False` is greedy decoding: temperature and top_p are ignored, and the n results of a
    prompt are identical.
    """

    max_new_tokens: int
    n: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            raise TypeError(f"stop must be a sequence of strings, not the string {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, not {self.n}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, not {self.temperature}; use do_sample=False for greedy")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    def describe(self) -> dict:
        """The parameters as plain JSON-able values (what to store beside the outputs)."""
        described = asdict(self)
        described["stop"] = list(self.stop)
        return described


@dataclass
class ChatPrompt:
    """Chat messages, an optional image for the (first) user turn, and a prefilled answer start.

    `choices`, when given, closes the answer: the model writes exactly one of these strings
    (tokenised right after `assistant_prefix`) and stops; the text generator decodes under a
    token-trie constraint (groundflow.generate.constrained.ChoiceConstraint).
    """

    messages: list[dict[str, str]]
    image: "Image.Image | None" = None
    assistant_prefix: str = ""
    choices: Sequence[str] | None = None


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]: ...

    def describe(self) -> dict: ...


def require_no_choices(prompts: Sequence[ChatPrompt], who: str) -> None:
    """Refuse prompts with `choices` in a backend that cannot constrain its decoding."""
    for index, prompt in enumerate(prompts):
        if prompt.choices is not None:
            raise NotImplementedError(
                f"prompt {index} has choices (a closed-set answer), which {who} cannot constrain; "
                f"use the 'hf' text generator"
            )


def _greedy_once(generate_n, params: SamplingParams) -> list[list[str]]:
    """Greedy decoding gives n identical results: decode once and repeat (transformers refuses
    num_return_sequences > 1 without sampling, and there is nothing to gain from n copies)."""
    if params.do_sample:
        return generate_n(params.n)
    return [texts * params.n for texts in generate_n(1)]


def _model_description(model, backend: str, kind: str, batch_size: int) -> dict:
    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
    return {
        "backend": backend,
        "kind": kind,
        "model": str(path),
        "dtype": str(model.dtype),
        "device": str(model.device),
        "batch_size": batch_size,
    }


class HFTextGenerator:
    """Batched generation with a local causal LM (groundflow.generate.text)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        for index, prompt in enumerate(prompts):
            if prompt.image is not None:
                raise ValueError(f"prompt {index} has an image, but a text generator cannot see images")
        rendered = [render_prompts(self.tokenizer, [p.messages], p.assistant_prefix)[0] for p in prompts]
        constraint = None
        with_choices = [p.choices is not None for p in prompts]
        if any(with_choices):
            if not all(with_choices):
                raise ValueError("either every prompt of a call has choices or none has")
            prefixes = {p.assistant_prefix for p in prompts}
            if len(prefixes) != 1:
                raise ValueError(f"prompts with choices must share one assistant_prefix, got {sorted(prefixes)}")
            constraint = ChoiceConstraint(
                self.tokenizer, [list(p.choices) for p in prompts], context=prefixes.pop(),
                eos_token_id=stop_token_ids(self.model, self.tokenizer)[0], max_tokens=params.max_new_tokens,
            )
        return _greedy_once(
            lambda n: generate_texts(
                self.model,
                self.tokenizer,
                rendered,
                max_new_tokens=params.max_new_tokens,
                do_sample=params.do_sample,
                temperature=params.temperature,
                top_p=params.top_p,
                num_return_sequences=n,
                batch_size=self.batch_size,
                seed=params.seed,
                stop_strings=params.stop or None,
                prefix_allowed_tokens_fn=constraint,
            ),
            params,
        )

    def describe(self) -> dict:
        return _model_description(self.model, "hf", "text", self.batch_size)


class HFVisionGenerator:
    """Batched generation with a local LLaVA (groundflow.generate.vision), images padded to square."""

    def __init__(self, model, processor, *, batch_size: int = 8, pad_square: bool = True):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.pad_square = pad_square

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        require_no_choices(prompts, "the vision generator")
        rendered = render_vision_prompts(
            self.processor,
            [p.messages for p in prompts],
            [p.image is not None for p in prompts],
            [p.assistant_prefix for p in prompts],
        )
        return _greedy_once(
            lambda n: generate_vision_texts(
                self.model,
                self.processor,
                rendered,
                [p.image for p in prompts],
                max_new_tokens=params.max_new_tokens,
                do_sample=params.do_sample,
                temperature=params.temperature,
                top_p=params.top_p,
                num_return_sequences=n,
                batch_size=self.batch_size,
                seed=params.seed,
                stop_strings=params.stop or None,
                pad_square=self.pad_square,
            ),
            params,
        )

    def describe(self) -> dict:
        return {**_model_description(self.model, "hf", "vision", self.batch_size), "pad_square": self.pad_square}


GENERATOR_SPEC_KEYS = frozenset(
    {
        "backend",
        "model",
        "batch_size",
        "pad_square",
        "base_url",
        "served_model",
        "api_key_env",
        "max_concurrency",
        "timeout_s",
        "max_retries",
        "backoff_s",
    }
)


def make_generator(spec: dict, *, kind: Literal["text", "vision"]) -> Generator:
    """A generator from config.

    spec = {"backend": "hf" | "openai", "model": {path, dtype, device}, "batch_size": int,
            "base_url": str, "served_model": str, "api_key_env": str, "max_concurrency": int,
            "timeout_s": float, "max_retries": int}
    "hf" loads the model once (a causal LM for kind "text", a LLaVA for "vision"). "openai" talks to
    `base_url`; the served model name defaults to the model's path, as `vllm serve PATH` names it.
    """
    if kind not in ("text", "vision"):
        raise ValueError(f"kind must be 'text' or 'vision', not {kind!r}")
    unknown = set(spec) - GENERATOR_SPEC_KEYS
    if unknown:
        raise ValueError(f"generator spec has unknown keys {sorted(unknown)}; known: {sorted(GENERATOR_SPEC_KEYS)}")
    backend = spec.get("backend", "hf")
    if backend == "hf":
        from groundflow.models.spec import ModelSpec

        if "model" not in spec:
            raise ValueError("an 'hf' generator spec needs 'model': {path, dtype, device}")
        model_spec = ModelSpec.from_config(spec["model"])
        batch_size = int(spec.get("batch_size", 8))
        if kind == "text":
            from groundflow.models.causal_lm import load_causal_lm

            model, tokenizer = load_causal_lm(model_spec)
            return HFTextGenerator(model, tokenizer, batch_size=batch_size)
        from groundflow.models.llava import load_llava

        model, processor = load_llava(model_spec)
        return HFVisionGenerator(model, processor, batch_size=batch_size, pad_square=bool(spec.get("pad_square", True)))
    if backend == "openai":
        from groundflow.generate.openai_compat import OpenAICompatibleGenerator

        if "base_url" not in spec:
            raise ValueError("an 'openai' generator spec needs 'base_url'")
        served_model = spec.get("served_model")
        if not served_model:
            if "model" not in spec:
                raise ValueError("an 'openai' generator spec needs 'served_model' (or 'model' with a path)")
            model_value = spec["model"]
            served_model = model_value if isinstance(model_value, str) else model_value["path"]
        options = {
            key: spec[key]
            for key in ("api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_s", "pad_square")
            if key in spec
        }
        return OpenAICompatibleGenerator(base_url=spec["base_url"], model=served_model, **options)
    raise ValueError(f"unknown generator backend {backend!r}; one of 'hf', 'openai'")


def check_result_shape(results: Sequence[Sequence[str]], prompts: Sequence[object], n: int) -> None:
    """Raise unless there is one list of exactly n strings per prompt."""
    if len(results) != len(prompts):
        raise AssertionError(f"{len(prompts)} prompts but {len(results)} result lists")
    for index, texts in enumerate(results):
        if len(texts) != n:
            raise AssertionError(f"prompt {index} got {len(texts)} results, expected n={n}")


__all__ = [
    "ChatPrompt",
    "Generator",
    "HFTextGenerator",
    "HFVisionGenerator",
    "SamplingParams",
    "check_result_shape",
    "make_generator",
    "require_no_choices",
]
