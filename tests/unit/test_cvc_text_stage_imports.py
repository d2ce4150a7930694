"""The CVC text-stage modules build prompts and parse answers without torch: model calls live in
groundflow.generate, loaded by the HF generators when they are built. A fresh interpreter checks
it, because this test session has already imported torch."""

import subprocess
import sys

MODULES = ["groundflow.cvc.entities", "groundflow.cvc.instructions", "groundflow.cvc.causality",
           "groundflow.cvc.prompts", "groundflow.generate.backends", "groundflow.generate.served"]


def test_cvc_text_stages_import_without_torch():
    code = "import sys\n" + "".join(f"import {m}\n" for m in MODULES) + (
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_the_masked_lm_scorer_does_import_torch():
    """The check above is not vacuous: the scorer's own module is where torch comes in."""
    code = "import sys, groundflow.generate.masked_lm\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
