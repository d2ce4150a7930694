"""The trials stage script checks its batch before it loads the model: a batch x n that the
estimate says cannot fit stops the job at once, naming the setting, instead of running out of
GPU memory in the first prefill."""

import json

import pandas as pd
import pytest

from groundflow.io import write_table
from groundflow.preflight import BatchDoesNotFit
from script_harness import FakeSnakemake, run_script, stage_outputs

LLAVA_7B = {"model_type": "llava",
            "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                            "vocab_size": 32064},
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                              "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 336,
                              "patch_size": 14}}


def test_trials_script_refuses_a_batch_that_cannot_fit_before_loading_the_model(tmp_path):
    # a real-size config.json and no weights: loading the model would fail with another error
    model = tmp_path / "llava-7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAVA_7B))
    write_table(pd.DataFrame({"id": ["a-dog"], "occluded_image": ["occluded/a-dog.jpg"],
                              "instruction": ["What is hidden?"]}), tmp_path / "records.parquet")
    opts = {"n": 16, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 384, "chunk_size": 8}
    smk = FakeSnakemake(
        input={"records": str(tmp_path / "records.parquet")}, output=stage_outputs(tmp_path, "trials"),
        params={"generation": {"backend": "hf", "batch_size": 32, "serve": None,
                               "model": {"path": str(model), "dtype": "bf16", "device": "cpu"}},
                "opts": opts, "gpu_memory_gib": 80, "seed": 0, "image_dir": str(tmp_path),
                "progress_dir": str(tmp_path / ".progress")},
        log=[str(tmp_path / "logs" / "0.log")],
    )
    with pytest.raises(BatchDoesNotFit, match=r"cvc_trials: .* > 80 GiB .*lower generation.vision.batch_size \(fits at <= 6\)"):
        run_script("cvc_trials.py", smk)
    assert not (tmp_path / "trials.parquet").exists()
