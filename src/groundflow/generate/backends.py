"""One generation interface over local Hugging Face models and OpenAI-compatible endpoints.

Methods ask for `params.n` completions of each `ChatPrompt` and get back, in prompt order, exactly
that many strings per prompt, whichever backend answers: batched transformers generation on a
local causal LM or LLaVA, or an HTTP endpoint (OpenAI, or `vllm serve` for speed at scale).
`describe()` of the generator and of the SamplingParams is stored beside the outputs.

What a backend can do beyond free generation is in its `features`:
- "choices": closed one-piece answers (`ChatPrompt.choices`);
- "lines": answers made of allowed lines (`ChatPrompt.lines`, a `LineChoices`);
- "score_choices": log-likelihood of each option (`score_choices`).
The local text generator has all three (token-trie constraints, LM scoring); an OpenAI-compatible
endpoint has "choices" and "lines" only when its config says the server does guided decoding
(vLLM), and never "score_choices". A stage picks its method from `features` and records the pick,
so nothing falls back silently.

This module does not import torch: the HF generators load their generation code when built, so
method code (groundflow.cvc) can build prompts without pulling torch in.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator, Literal, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

FEATURES = frozenset({"choices", "lines", "score_choices"})


class UnsupportedFeatureError(NotImplementedError):
    """A backend was asked for something it cannot do (e.g. choice scoring from an HTTP endpoint)."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters, always passed explicitly to the backend.

    `do_sample=False` is greedy decoding: temperature, top_p and top_k are ignored, and the n results
    of a prompt are identical. `top_k` 0 keeps every token (no top-k filter); `repetition_penalty`
    1.0 is none (it applies to greedy decoding too). Both are stated, never left to a checkpoint's
    `generation_config` (Qwen2.5-VL ships top_k 1 and repetition_penalty 1.05, spec trap §10.12).
    """

    max_new_tokens: int
    n: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_k: int = 0
    repetition_penalty: float = 1.0

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
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no top-k filter), not {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0: none), not {self.repetition_penalty}")

    def describe(self) -> dict:
        """The parameters as plain JSON-able values (what to store beside the outputs)."""
        described = asdict(self)
        described["stop"] = list(self.stop)
        return described


@dataclass(frozen=True)
class LineChoices:
    """An answer made of lines from an allowed set, then an end marker.

    Line i reads f"{i}. {content}{line_end}" (content + line_end when not `numbered`), each
    content from `allowed` at most once; at least `min_lines` lines (or all there are), at most
    `max_lines` (None: no limit), then `end_marker`. The HF text generator decodes it under
    groundflow.generate.constrained.LineSequenceConstraint; a guided-decoding endpoint gets a
    regular expression of it (`line_choices_regex`), which cannot forbid a repeated line.
    """

    allowed: tuple[str, ...]
    end_marker: str
    min_lines: int = 0
    max_lines: int | None = None
    numbered: bool = True
    line_end: str = "\n"

    def __post_init__(self) -> None:
        if isinstance(self.allowed, str):
            raise TypeError("allowed must be a sequence of line contents, not one string")
        object.__setattr__(self, "allowed", tuple(dict.fromkeys(self.allowed)))
        if any(not line for line in self.allowed):
            raise ValueError("allowed line contents must be non-empty")
        if not self.end_marker:
            raise ValueError("end_marker must be non-empty")
        if self.min_lines < 0 or (self.max_lines is not None and self.max_lines < 1):
            raise ValueError(f"need min_lines >= 0 and max_lines >= 1, got {self.min_lines}, {self.max_lines}")

    def line_text(self, number: int, content: str) -> str:
        return f"{number}. {content}{self.line_end}" if self.numbered else f"{content}{self.line_end}"

    def byte_budget(self) -> int:
        """An upper bound on the tokens of any complete answer, from UTF-8 bytes.

        Byte-level BPE and byte-fallback SentencePiece tokens each cover at least one byte, so the
        bytes of the longest complete answer (plus eos and a little slack) bound its token count
        without a tokenizer; an HTTP backend has none.
        """
        count = len(self.allowed) if self.max_lines is None else min(self.max_lines, len(self.allowed))
        widest = max(count, 1)
        lengths = sorted((len(self.line_text(widest, c).encode()) for c in self.allowed), reverse=True)
        return sum(lengths[:count]) + 2 * count + len(self.end_marker.encode()) + 2


@dataclass
class ChatPrompt:
    """Chat messages, an optional image for the (first) user turn, and a prefilled answer start.

    `choices`, when given, closes the answer: the model writes exactly one of these strings
    (tokenised right after `assistant_prefix`) and stops; the text generator decodes under a
    token-trie constraint (groundflow.generate.constrained.ChoiceConstraint). `lines`, when given,
    closes it to a sequence of allowed lines (`LineChoices`). At most one of the two.
    """

    messages: list[dict[str, str]]
    image: "Image.Image | None" = None
    assistant_prefix: str = ""
    choices: Sequence[str] | None = None
    lines: LineChoices | None = None

    def __post_init__(self) -> None:
        if self.choices is not None and self.lines is not None:
            raise ValueError("a prompt closes its answer by choices or by lines, not both")


@runtime_checkable
class Generator(Protocol):
    features: frozenset[str]

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]: ...

    def score_choices(self, prompts: Sequence[ChatPrompt], choices: Sequence[Sequence[str]], *,
                      normalize: str = "sum") -> list[list[float]]:
        """Log-likelihood of each of prompt p's `choices[p]` as the continuation of its
        `assistant_prefix` ("sum": log p(choice | prompt); "mean": per token)."""
        ...

    def describe(self) -> dict: ...


def require_no_choices(prompts: Sequence[ChatPrompt], who: str) -> None:
    """Refuse prompts with `choices` or `lines` in a backend that cannot constrain its decoding."""
    for index, prompt in enumerate(prompts):
        if prompt.choices is not None or prompt.lines is not None:
            what = "choices (a closed-set answer)" if prompt.choices is not None else "lines (a closed set of lines)"
            raise UnsupportedFeatureError(
                f"prompt {index} has {what}, which {who} cannot constrain; use the 'hf' text "
                f"generator, or an endpoint with guided decoding (generation.<kind>.guided_decoding)"
            )


def _shared_prefix(prompts: Sequence[ChatPrompt], what: str) -> str:
    prefixes = {p.assistant_prefix for p in prompts}
    if len(prefixes) != 1:
        raise ValueError(f"prompts with {what} must share one assistant_prefix, got {sorted(prefixes)}")
    return prefixes.pop()


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

    features = FEATURES

    # Prompts with `lines` go through in groups of this many batches, each group with its own
    # constraint, so the token tries (thousands of nodes per prompt) never pile up over a chunk.
    LINE_GROUP_BATCHES = 4

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def _render(self, prompts: Sequence[ChatPrompt]) -> list[str]:
        from groundflow.generate.text import render_prompts

        for index, prompt in enumerate(prompts):
            if prompt.image is not None:
                raise ValueError(f"prompt {index} has an image, but a text generator cannot see images")
        return [render_prompts(self.tokenizer, [p.messages], p.assistant_prefix)[0] for p in prompts]

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        from groundflow.generate.constrained import ChoiceConstraint
        from groundflow.generate.text import stop_token_ids

        rendered = self._render(prompts)
        with_lines = [p.lines is not None for p in prompts]
        if any(with_lines):
            if not all(with_lines):
                raise ValueError("either every prompt of a call has lines or none has")
            return self._generate_lines(prompts, rendered, params)
        constraint = None
        with_choices = [p.choices is not None for p in prompts]
        if any(with_choices):
            if not all(with_choices):
                raise ValueError("either every prompt of a call has choices or none has")
            constraint = ChoiceConstraint(
                self.tokenizer, [list(p.choices) for p in prompts], context=_shared_prefix(prompts, "choices"),
                eos_token_id=stop_token_ids(self.model, self.tokenizer)[0], max_tokens=params.max_new_tokens,
            )
        return self._decode(rendered, params, constraint, params.max_new_tokens)

    def _generate_lines(self, prompts: Sequence[ChatPrompt], rendered: list[str],
                        params: SamplingParams) -> list[list[str]]:
        """Decoding under a LineSequenceConstraint per group of prompts.

        The budget of a group is the tokens its longest complete answer can take, capped by
        params.max_new_tokens: any budget at least that large gives the same answers.
        """
        from groundflow.generate.constrained import LineSequenceConstraint

        context = _shared_prefix(prompts, "lines")
        shapes = {(p.lines.end_marker, p.lines.min_lines, p.lines.max_lines, p.lines.numbered, p.lines.line_end)
                  for p in prompts}
        if len(shapes) != 1:
            raise ValueError("prompts with lines in one call must share end marker, line counts and format")
        end_marker, min_lines, max_lines, numbered, line_end = shapes.pop()
        results: list[list[str]] = []
        group = max(self.batch_size, 1) * self.LINE_GROUP_BATCHES
        for start in range(0, len(prompts), group):
            members = prompts[start:start + group]
            constraint = LineSequenceConstraint(
                self.tokenizer, [list(p.lines.allowed) for p in members], context=context,
                end_marker=end_marker, line_end=line_end, numbered=numbered,
                max_lines=max_lines, min_lines=min_lines,
            )
            budget = min(params.max_new_tokens, max(constraint.token_budget(i) for i in range(len(members))))
            results.extend(self._decode(rendered[start:start + group], params, constraint, budget))
        return results

    def _decode(self, rendered: list[str], params: SamplingParams, constraint, max_new_tokens: int) -> list[list[str]]:
        from groundflow.generate.text import generate_texts

        return _greedy_once(
            lambda n: generate_texts(
                self.model,
                self.tokenizer,
                rendered,
                max_new_tokens=max_new_tokens,
                do_sample=params.do_sample,
                temperature=params.temperature,
                top_p=params.top_p,
                num_return_sequences=n,
                batch_size=self.batch_size,
                seed=params.seed,
                stop_strings=params.stop or None,
                prefix_allowed_tokens_fn=constraint,
                top_k=params.top_k,
                repetition_penalty=params.repetition_penalty,
            ),
            params,
        )

    def score_choices(self, prompts: Sequence[ChatPrompt], choices: Sequence[Sequence[str]], *,
                      normalize: str = "sum") -> list[list[float]]:
        """Log-likelihoods by one batched forward pass per `batch_size` (prompt, choice) pairs."""
        from groundflow.generate.text import score_choices

        if len(choices) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
        if not prompts:
            return []
        return score_choices(self.model, self.tokenizer, self._render(prompts), [list(c) for c in choices],
                             batch_size=self.batch_size, normalize=normalize)

    def describe(self) -> dict:
        return _model_description(self.model, "hf", "text", self.batch_size)


class HFVisionGenerator:
    """Batched generation with a local LLaVA or Qwen2.5-VL (groundflow.generate.vision); images
    padded to square when `pad_square` (LLaVA-1.5's way; `make_generator` sets it by family)."""

    features: frozenset[str] = frozenset()

    def __init__(self, model, processor, *, batch_size: int = 8, pad_square: bool = True,
                 conversation_format: str = "model"):
        from groundflow.train.chat_formats import chat_template_for

        chat_template_for(conversation_format)  # an unknown name fails here, not at the first batch
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.pad_square = pad_square
        self.conversation_format = conversation_format

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        from groundflow.generate.vision import generate_vision_texts, render_vision_prompts

        require_no_choices(prompts, "the vision generator")
        rendered = render_vision_prompts(
            self.processor,
            [p.messages for p in prompts],
            [p.image is not None for p in prompts],
            [p.assistant_prefix for p in prompts],
            conversation_format=self.conversation_format,
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
                top_k=params.top_k,
                repetition_penalty=params.repetition_penalty,
            ),
            params,
        )

    def score_choices(self, prompts: Sequence[ChatPrompt], choices: Sequence[Sequence[str]], *,
                      normalize: str = "sum") -> list[list[float]]:
        raise UnsupportedFeatureError("the HF vision generator does not score choices; use the 'hf' text generator")

    def describe(self) -> dict:
        return {**_model_description(self.model, "hf", "vision", self.batch_size), "pad_square": self.pad_square,
                "conversation_format": self.conversation_format}


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
        "guided_decoding",
        "serve",
        "conversation_format",
    }
)


def _build_generator(spec: dict, kind: str) -> Generator:
    unknown = set(spec) - GENERATOR_SPEC_KEYS
    if unknown:
        raise ValueError(f"generator spec has unknown keys {sorted(unknown)}; known: {sorted(GENERATOR_SPEC_KEYS)}")
    backend = spec.get("backend", "hf")
    if kind == "text" and spec.get("conversation_format", "model") != "model":
        raise ValueError("conversation_format applies to vision generation; text generation uses the model's template")
    if backend == "hf":
        from groundflow.models.spec import ModelSpec

        if "model" not in spec:
            raise ValueError("an 'hf' generator spec needs 'model': {path, dtype, device}")
        if spec.get("serve"):
            raise ValueError("'serve' starts an OpenAI-compatible server: it needs backend: openai")
        model_spec = ModelSpec.from_config(spec["model"])
        batch_size = int(spec.get("batch_size", 8))
        if kind == "text":
            from groundflow.models.causal_lm import load_causal_lm

            model, tokenizer = load_causal_lm(model_spec)
            return HFTextGenerator(model, tokenizer, batch_size=batch_size)
        from groundflow.models.vision_lm import load_vision_lm

        # LLaVA or Qwen2.5-VL, by the checkpoint's config; images padded to square as its family trains
        model, processor, family = load_vision_lm(model_spec)
        pad_square = bool(spec.get("pad_square", family.pad_to_square))
        return HFVisionGenerator(model, processor, batch_size=batch_size, pad_square=pad_square,
                                 conversation_format=spec.get("conversation_format", "model"))
    if backend == "openai":
        from groundflow.generate.openai_compat import OpenAICompatibleGenerator

        if not spec.get("base_url"):
            raise ValueError("an 'openai' generator spec needs 'base_url' (or 'serve' to start a server)")
        served_model = spec.get("served_model")
        if not served_model:
            if "model" not in spec:
                raise ValueError("an 'openai' generator spec needs 'served_model' (or 'model' with a path)")
            model_value = spec["model"]
            served_model = model_value if isinstance(model_value, str) else model_value["path"]
        options = {
            key: spec[key]
            for key in ("api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_s", "pad_square",
                        "guided_decoding")
            if key in spec
        }
        from groundflow.train.chat_formats import chat_template_for

        # the server renders the messages: a format other than the model's own goes as its template
        chat_template = chat_template_for(spec.get("conversation_format", "model"))
        if chat_template is not None:
            options["chat_template"] = chat_template
        return OpenAICompatibleGenerator(base_url=spec["base_url"], model=served_model, **options)
    raise ValueError(f"unknown generator backend {backend!r}; one of 'hf', 'openai'")


@contextlib.contextmanager
def open_generator(spec: dict, *, kind: Literal["text", "vision"],
                   server_log: str | None = None) -> Iterator[Generator]:
    """A generator from config for the length of a block; a managed server (`serve`) lives as long.

    spec = {"backend": "hf" | "openai", "model": {path, dtype, device}, "batch_size": int,
            "base_url": str, "served_model": str, "api_key_env": str, "max_concurrency": int,
            "timeout_s": float, "max_retries": int, "guided_decoding": None | "structured_outputs"
            | "guided", "serve": None | {command, args, port, startup_timeout_s, stop_timeout_s, log},
            "conversation_format": "model" | a name of groundflow.train.chat_formats (vision only)}
    "hf" loads the model once (a causal LM for kind "text"; for "vision" a LLaVA or a Qwen2.5-VL,
    by its config's model_type, `pad_square` defaulting to the family's way: on for LLaVA, off for
    Qwen). "openai" talks to `base_url`; the served model name defaults to the model's path, as
    `vllm serve PATH` names it.
    With `serve`, `vllm serve` (or the configured command) is started for the block and stopped
    after it (groundflow.generate.served); `server_log` receives its output.
    """
    if kind not in ("text", "vision"):
        raise ValueError(f"kind must be 'text' or 'vision', not {kind!r}")
    from groundflow.generate.served import served_endpoint

    with served_endpoint(spec, log_path=server_log) as resolved:
        yield _build_generator(resolved, kind)


def make_generator(spec: dict, *, kind: Literal["text", "vision"]) -> Generator:
    """A generator from config (the spec of `open_generator`) with no server to manage."""
    if spec.get("serve"):
        raise ValueError("a spec with 'serve' starts a server for a block: use open_generator(spec, ...) in a with")
    if kind not in ("text", "vision"):
        raise ValueError(f"kind must be 'text' or 'vision', not {kind!r}")
    return _build_generator(spec, kind)


def check_result_shape(results: Sequence[Sequence[str]], prompts: Sequence[object], n: int) -> None:
    """Raise unless there is one list of exactly n strings per prompt."""
    if len(results) != len(prompts):
        raise AssertionError(f"{len(prompts)} prompts but {len(results)} result lists")
    for index, texts in enumerate(results):
        if len(texts) != n:
            raise AssertionError(f"prompt {index} got {len(texts)} results, expected n={n}")


__all__ = [
    "FEATURES",
    "ChatPrompt",
    "Generator",
    "HFTextGenerator",
    "HFVisionGenerator",
    "LineChoices",
    "SamplingParams",
    "UnsupportedFeatureError",
    "check_result_shape",
    "make_generator",
    "open_generator",
    "require_no_choices",
]
