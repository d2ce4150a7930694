"""CVC's evaluation jobs on a LLaVA-1.5-7B-shaped checkpoint on one GPU: measured peak memory and
time against preflight's estimate for the same jobs.

The checkpoint is a LlavaForConditionalGeneration with LLaVA-1.5-7B's shapes (CLIP ViT-L/14-336,
2-layer MLP projector, Llama-7B: hidden 4096, 32 layers, MLP 11008, vocabulary 32064) and random
weights in bf16, saved in HF format with a small fitted tokenizer (ids it lacks decode to nothing),
so lmms-eval loads it by path exactly as it loads llava-1.5-7b-hf. Nothing is downloaded.

Measured, each with the GPU's peak allocated memory reset before it:
- `cvc_eval` on the drawn POPE-form yes/no file (groundflow_yes_no, lmms-eval's llava_hf, batch 1);
- `cvc_eval` on an MME-form parquet (groundflow_mme: lmms-eval's MME utils over the lmms-lab schema);
- `cvc_probe_eval`'s answering: the probe's occluded-object questions through groundflow's vision
  generator at cvc.probe.batch_size (16) and max_new_tokens (32), greedy.
Each against `groundflow.models.memory.generation_memory` for the job as preflight sizes it.

Usage:  python bench/gpu_cvc_eval.py --out $OUT/gpu_cvc_eval.json
        python bench/gpu_cvc_eval.py --tiny --out /tmp/tiny.json   (same code path on CPU, tiny shapes)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GIB = 2**30


def build_checkpoint(out: Path, *, tiny: bool) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor

    from groundflow.models.llava import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, IMAGE_TOKEN, LLAVA_15_CHAT_TEMPLATE
    from groundflow.models.tokenizers import build_tokenizer
    from transformers import AutoTokenizer

    build_tokenizer("llama", out, texts=["Is there a cat in the image? yes no", "What might the object be?"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tiny:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=336, patch_size=14, projection_dim=32)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4)
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32)
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(vocab_size=32064, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text),
        image_token_index=image_token, image_seq_length=576, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    device = "cpu" if tiny else "cuda"
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    for module in model.modules():  # random weights of a sane scale (generation must not produce NaN)
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    del model
    if not tiny:
        torch.cuda.empty_cache()
    LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                           do_center_crop=True, image_mean=list(CLIP_IMAGE_MEAN),
                                           image_std=list(CLIP_IMAGE_STD)),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        chat_template=LLAVA_15_CHAT_TEMPLATE, image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
    ).save_pretrained(out)
    return out


def mme_parquet(path: Path, n_images: int) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage
    from PIL import Image, ImageDraw

    rows = []
    for index in range(n_images):
        image = Image.new("RGB", (640, 480), (30 * index % 255, 120, 200))
        ImageDraw.Draw(image).ellipse((100 + index * 10, 100, 300, 260), fill=(240, 60, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        for answer in ("Yes", "No"):
            rows.append({"question_id": f"existence/{index:04d}.png", "image": {"bytes": buffer.getvalue(), "path": None},
                         "question": "Is there a red ball in the image? Please answer yes or no.",
                         "answer": answer, "category": "existence"})
    text = Value("string")
    Dataset.from_list(rows, features=Features({"question_id": text, "image": HFImage(), "question": text,
                                               "answer": text, "category": text})).to_parquet(str(path))
    return path


def measured(device: str, run) -> dict:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    info = run()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    return {**info, "wall_s": round(wall, 2), "peak_allocated_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu_cvc_eval")
    args = parser.parse_args()

    from groundflow.cvc.eval_fixture import make_eval_fixture
    from groundflow.cvc.probe import answer_probe
    from groundflow.evaluate.harness import run_benchmark
    from groundflow.generate.backends import SamplingParams, open_generator
    from groundflow.models import memory
    from groundflow.preflight import EVAL_NEW_TOKENS, EVAL_PROMPT_TOKENS, IMAGE_TOKENS
    import pandas as pd

    device = "cpu" if args.tiny else "cuda"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__}
    start = time.perf_counter()
    checkpoint = build_checkpoint(work / "llava-7b-shape", tiny=args.tiny)
    report["build_s"] = round(time.perf_counter() - start, 1)
    arch = json.loads((checkpoint / "config.json").read_text())
    spec = {"path": str(checkpoint), "dtype": "bf16", "device": device}

    fixture = work / "fixture"
    make_eval_fixture(fixture, seed=0, n_images=8, include_bad=False)
    mme = mme_parquet(work / "mme.parquet", n_images=4)

    def benchmark(task, files):
        def run():
            result = run_benchmark(model=spec, task=task, data_files=files)
            return {"task": task, "n_samples": result["n_samples"], "metrics": result["metrics"],
                    "responses": [s["response"] for s in result["samples"][:3]]}
        return run

    estimate = memory.generation_memory(arch, dtype=2, batch=1, n=1, prompt_tokens=IMAGE_TOKENS + EVAL_PROMPT_TOKENS,
                                        max_new_tokens=EVAL_NEW_TOKENS)
    report["cvc_eval_estimate_gib"] = round(estimate.total / GIB, 2)
    report["yes_no"] = measured(device, benchmark("groundflow_yes_no", {"test": str(fixture / "yes_no.jsonl")}))
    report["mme"] = measured(device, benchmark("groundflow_mme", {"test": str(mme)}))

    records = [json.loads(line) for line in (fixture / "multiple_choice.jsonl").read_text().splitlines()]
    probe = pd.DataFrame([{"id": f"p{i}", "label": "ball", "occluded_image": f"fixture/{records[i % len(records)]['image']}",
                           "instruction": "In the given image, there is an object heavily occluded by a cluster of "
                                          "gray blocks. Please answer the following question.\nWhat might the "
                                          "object occluded by the gray blocks be?"} for i in range(16)])
    generation = {"backend": "hf", "batch_size": 16, "model": spec, "conversation_format": "vicuna_v1"}
    params = SamplingParams(max_new_tokens=32, n=1, do_sample=False)

    def probe_run():
        with open_generator(generation, kind="vision") as generator:
            result = answer_probe(probe, generator, params, image_dir=work)
        return {"n_answered": len(result.kept), "n_rejected": len(result.rejects),
                "responses": list(result.kept["response"][:3])}

    estimate = memory.generation_memory(arch, dtype=2, batch=16, n=1, prompt_tokens=IMAGE_TOKENS + EVAL_PROMPT_TOKENS,
                                        max_new_tokens=32)
    report["probe_estimate_gib"] = round(estimate.total / GIB, 2)
    report["probe"] = measured(device, probe_run)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
