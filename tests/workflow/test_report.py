"""`snakemake --report report.html` on the demo run, rendered in headless Chromium.

The report is a JavaScript app that embeds every result as a data URI; the plots only appear in the
page once it has run. So the test drives Debian's Chromium over the DevTools protocol: it opens
the report, clicks through the result categories as a reader would, and for every plot checks
that its row is listed, its caption is shown, the image decodes, and a screenshot of it is not
blank.
"""
from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from snakemake_runner import snakemake

pytestmark = pytest.mark.workflow

CHROMIUM = "chromium"
# Headless and offline: no sandbox (CI runs as root in a container), no GPU, and none of the
# background traffic (updates, sync, field trials) a first start would try.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
    "--remote-debugging-pipe",
]


def plots(config: dict) -> dict[str, tuple[str, str, str]]:
    """plot file -> (subcategory, the caption's opening, a caption phrase rendered from this run's
    parameters)."""
    cvc = config["cvc"]
    causality = cvc["causality"]
    selection = cvc["selection"]
    return {
        "stage_counts.png": ("1 Overview", "Records per stage", "kept (blue) and rejected (orange)"),
        "entities_per_caption.png": ("2 Data preparation", "Entities per caption",
                                     f"max_entities = {cvc['entities']['max_entities']}"),
        "causality_ppl.png": ("2 Data preparation", "Causality: the masked LM",
                              f"keep window ({causality['ppl_low']}, {causality['ppl_high']})"),
        "box_scores.png": ("2 Data preparation", f"Grounding ({cvc['grounding']['backend']})",
                           f"threshold of this backend, {cvc['grounding']['dino_box_threshold']}"),
        "occluded_examples.png": ("2 Data preparation", "Occluded examples", "up to 8 final instances"),
        "trial_success.png": ("3 Trial learning", "Trial success",
                              f"Instances with {selection['cot_min']} <= k <= {selection['cot_max']} correct trials"),
        "train_loss.png": ("4 Training", "Training loss", f"learning rate {cvc['train']['learning_rate']}"),
    }


def cings_plots(config: dict) -> dict[str, tuple[str, str, str]]:
    """The CINGS section: its evaluation table and the POPE scores of its VL checkpoints."""
    assert config["cings"]["vl"]["modes"], "the demo builds a VL checkpoint"
    return {
        "eval.png": ("1 Evaluation", "CINGS's evaluation", "per dataset and metric"),
        "pope.png": ("2 Hallucination", "Object hallucination of each CINGS VL checkpoint", "in the POPE form"),
    }


class DevToolsPipe:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): the browser
    reads commands from its fd 3 and writes replies and events to its fd 4, each message JSON
    ending in a NUL byte."""

    def __init__(self, profile_dir: Path, timeout: float = 60.0):
        binary = shutil.which(CHROMIUM)
        if binary is None:
            pytest.fail(f"'{CHROMIUM}' is not on PATH; the report test renders report.html in Debian's "
                        "headless Chromium: `make system-deps` (apt-get install chromium) installs it")
        self.timeout = timeout
        profile_dir.mkdir(parents=True, exist_ok=True)
        # the browser's own output goes to a file: a pipe nobody reads could fill and stall it
        self.log_path = profile_dir / "chromium.log"
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        # the shell moves the pipe ends onto fds 3 and 4 before it execs the browser; bash, since
        # dash (Debian's sh) refuses fd numbers above 9, which a long test session's pipes get
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', binary,
                 *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                pass_fds=(to_browser, from_browser), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError(f"no reply from Chromium within {self.timeout} s; its output:\n{self.output()}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe; its output:\n{self.output()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, width: int = 1400, height: int = 900) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the report never showed {what}; page text:\n{self.evaluate(PAGE_TEXT)[:3000]}")

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        os.close(self._commands)  # closing the pipe ends the browser
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._replies)


PAGE_TEXT = "(document.body ? document.body.innerText : '')"
# Clicks the report's own links and buttons, as a reader would. OPEN_SUBCATEGORY clicks the
# subcategory's link (menu or breadcrumb) when it is on the page, else goes up one level (the
# category's breadcrumb, or "Results" on the start page); true once the subcategory is open.
OPEN_SUBCATEGORY = """((wanted, category) => {{
    const link = text => [...document.querySelectorAll('a')].find(a => a.textContent.trim() === text);
    if (app.state.navbarMode === 'subcategory' && app.state.subcategory === wanted) return true;
    const next = link(wanted) || link(category) || link('Results');
    if (next) next.click();
    return false;
}})({wanted}, {category})"""
CLICK_ROW_BUTTON = """((path, index) => {{
    const row = [...document.querySelectorAll('tr')].find(tr => tr.textContent.includes(path));
    const button = row && row.querySelectorAll('a[type=button]')[index];
    if (button) button.click();
    return Boolean(button);
}})({path}, {index})"""
LISTED_RESULTS = """[...document.querySelectorAll('tr')].map(tr => tr.textContent.trim())
    .filter(text => text.startsWith('results/')).sort()"""
# The result info panel: the caption is the item under the "Description" heading.
SHOWN_CAPTION = """(() => {
    const heading = [...document.querySelectorAll('li')].find(li => li.textContent.trim() === 'Description');
    return heading && heading.nextElementSibling ? heading.nextElementSibling.innerText.replace(/\\s+/g, ' ').trim() : null;
})()"""
SHOWN_IMAGE = """(async path => {{
    const img = [...document.images].find(i => i.getAttribute('src') === results[path].data_uri);
    if (!img) return null;
    await img.decode();
    const box = img.getBoundingClientRect();
    return {{width: img.naturalWidth, height: img.naturalHeight,
            box: [box.left, box.top, box.right, box.bottom].map(Math.round)}};
}})({path})"""


@pytest.fixture(scope="module")
def report(demo):
    out = demo / "report.html"
    started = time.perf_counter()
    snakemake(demo, "--report", str(out))
    print(f"snakemake --report: {time.perf_counter() - started:.1f} s, {out.stat().st_size / 1e6:.1f} MB")
    return out


def test_report_renders_every_plot_with_its_caption(demo, report, tmp_path):
    config = yaml.safe_load((demo / "config.yaml").read_text())
    expected = plots(config)
    browser = DevToolsPipe(tmp_path / "profile")
    try:
        browser.open(report.resolve().as_uri())
        # landing page: the workflow description, rendered by the report's JavaScript
        browser.wait_for(f"{PAGE_TEXT}.includes('groundflow runs each configured method')", "the workflow description")
        assert "Please enable Javascript" not in browser.evaluate(PAGE_TEXT)
        assert {"CVC", "CINGS"} <= set(browser.evaluate("Object.keys(categories)"))

        sections = [("CVC", "cvc", expected), ("CINGS", "cings", cings_plots(config))]
        for category, method, section in sections:
            for name, (subcategory, opening, phrase) in section.items():
                path = f"results/{method}/plots/{name}"
                browser.wait_for(OPEN_SUBCATEGORY.format(wanted=json.dumps(subcategory), category=json.dumps(category)),
                                 f"subcategory {subcategory}", timeout=10)
                listed = browser.wait_for(LISTED_RESULTS, f"the results of {subcategory}")
                assert listed == sorted(f"results/{method}/plots/{n}" for n, (sub, *_) in section.items() if sub == subcategory)
                # the eye button shows the plot, the info button its caption
                assert browser.evaluate(CLICK_ROW_BUTTON.format(path=json.dumps(path), index=0))
                image = browser.wait_for(SHOWN_IMAGE.format(path=json.dumps(path)), f"the image of {path}")
                with Image.open(demo / path) as original:
                    assert (image["width"], image["height"]) == original.size, (name, image)
                shot = browser.screenshot()
                shot.save(tmp_path / name)
                left, top, right, bottom = image["box"]
                shown = np.asarray(shot.crop((max(left, 0), max(top, 0), min(right, shot.width), min(bottom, shot.height))).convert("L"))
                assert shown.size and shown.std() > 10 and len(np.unique(shown)) > 20, f"{name} renders blank"
                assert browser.evaluate(CLICK_ROW_BUTTON.format(path=json.dumps(path), index=1))
                caption = browser.wait_for(SHOWN_CAPTION, f"the caption of {name}")
                assert caption.startswith(opening) and phrase in caption, (name, caption)
                browser.screenshot().save(tmp_path / f"{Path(name).stem}.caption.png")
    finally:
        browser.close()
    print(f"screenshots: {tmp_path}")
