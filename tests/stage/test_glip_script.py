"""scripts/glip_boxes.py, the GLIP command a user runs in GLIP's environment, against a fake GLIP.

GLIP cannot be installed here, so the test writes a fake GLIP repository into tmp_path: a
`maskrcnn_benchmark` package with the two names the script uses (`config.cfg` and
`engine.predictor_glip.GLIPDemo`), whose predictions are fixed boxes and scores per caption, plus
the config and checkpoint files the command names. The grounding stage runs the script through
`run_external_grounder` exactly as `backend: glip` does, so what is checked is the contract: the
table the script writes is the one the stage reads.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from groundflow.io.stage import check_accounting
from groundflow.vision.grounding import run_external_grounder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "glip_boxes.py"
THRESHOLD = 0.6

# caption -> GLIP's raw predictions, [x0, y0, x1, y1] and score, in no particular order
PREDICTIONS = {
    "dog": [([5, 5, 20, 20], 0.6), ([0, 0, 10, 10], 0.59), ([1, 2, 30, 40], 0.9), ([2, 2, 50, 44], 0.75)],
    "cat": [([3, 3, 9, 9], 0.3), ([10, 10, 40, 30], 0.55)],
    "tennis ball": [],
}

FAKE_CONFIG = '''
class _Cfg:
    """The yacs CfgNode surface the script uses; merges are recorded for the test."""

    def __init__(self):
        self.merged = []

    def merge_from_file(self, path):
        self.merged.append(["file", path])

    def merge_from_list(self, items):
        self.merged.append(list(items))


cfg = _Cfg()
'''

FAKE_PREDICTOR = '''
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


class BoxList:
    """maskrcnn_benchmark's BoxList surface: .bbox, .get_field, .convert. Built in xywh so that
    reading .bbox without converting to xyxy first gives wrong boxes."""

    def __init__(self, xyxy, scores):
        boxes = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
        self.mode = "xywh"
        self.bbox = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        self.fields = {"scores": torch.tensor(scores, dtype=torch.float32)}

    def convert(self, mode):
        assert mode == "xyxy"
        out = BoxList([], [])
        out.mode, out.fields = "xyxy", self.fields
        out.bbox = torch.cat([self.bbox[:, :2], self.bbox[:, :2] + self.bbox[:, 2:]], dim=1)
        return out

    def get_field(self, name):
        return self.fields[name]


class GLIPDemo:
    def __init__(self, cfg, confidence_threshold=0.7, min_image_size=None, show_mask_heatmaps=True):
        self.cfg = cfg
        with open(os.path.join(HERE, "predictions.json")) as f:
            self.predictions = json.load(f)
        self.log = open(os.path.join(HERE, "calls.jsonl"), "a")
        self.log.write(json.dumps({"init": cfg.merged, "min_image_size": min_image_size,
                                   "show_mask_heatmaps": show_mask_heatmaps, "cwd": os.getcwd()}) + "\\n")

    def compute_prediction(self, original_image, original_caption):
        self.log.write(json.dumps({"caption": original_caption, "shape": list(original_image.shape),
                                   "dtype": str(original_image.dtype),
                                   "pixel": original_image[0, 0].tolist()}) + "\\n")
        self.log.flush()
        found = self.predictions[original_caption]
        return BoxList([box for box, _ in found], [score for _, score in found])
'''


@pytest.fixture()
def fake_glip_repo(tmp_path):
    """A folder laid out as a GLIP checkout: maskrcnn_benchmark, a config file and a checkpoint."""
    root = tmp_path / "GLIP"
    package = root / "maskrcnn_benchmark"
    (package / "config").mkdir(parents=True)
    (package / "engine").mkdir()
    (package / "__init__.py").write_text("")
    (package / "config" / "__init__.py").write_text(FAKE_CONFIG)
    (package / "engine" / "__init__.py").write_text("")
    (package / "engine" / "predictor_glip.py").write_text(FAKE_PREDICTOR)
    (package / "engine" / "predictions.json").write_text(json.dumps(PREDICTIONS))
    (root / "configs" / "pretrain").mkdir(parents=True)
    (root / "configs" / "pretrain" / "glip_Swin_L.yaml").write_text("MODEL: {}\n")
    (root / "MODEL").mkdir()
    (root / "MODEL" / "glip_large_model.pth").write_bytes(b"not read by the fake")
    return root


def _calls(root: Path) -> list[dict]:
    path = root / "maskrcnn_benchmark" / "engine" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png"):  # R=200 G=10 B=30 in the corner (lossless): GLIP must get it as BGR
        pixels = Image.new("RGB", (64, 48), (90, 90, 90))
        pixels.putpixel((0, 0), (200, 10, 30))
        pixels.save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = [("a-dog", "a.png", "dog"), ("b-cat", "b.png", "cat"), ("a-tennis ball", "a.png", "tennis ball"),
            ("broken-dog", "broken.jpg", "dog")]
    df = pd.DataFrame({"id": [r[0] for r in rows], "image": [r[1] for r in rows], "label": [r[2] for r in rows],
                       "width": 64, "height": 48})
    return root, df


def _command(glip_root: Path) -> str:
    return " ".join([
        shlex.quote(sys.executable), shlex.quote(str(SCRIPT)), "--glip-root", shlex.quote(str(glip_root)),
        "--config configs/pretrain/glip_Swin_L.yaml --weights MODEL/glip_large_model.pth",
        "--requests {requests} --boxes {boxes} --threshold {threshold} --max-boxes {max_boxes}",
    ])


def test_the_glip_script_writes_the_box_table_the_grounding_stage_reads(fake_glip_repo, tmp_path, monkeypatch):
    image_root, df = _images(tmp_path)
    # the stage hands relative paths when its progress folder is relative: run from another folder
    monkeypatch.chdir(tmp_path)
    result = run_external_grounder(
        df, image_root, command=_command(fake_glip_repo), box_threshold=THRESHOLD, max_boxes=10,
        workdir=Path("glip-work"),
    )
    check_accounting("grounding", df["id"], result)

    # The table as written: one line per readable request, the protocol's three keys, every box
    # scoring >= the threshold (0.6 itself included), best first, in xyxy pixels.
    table = {row["id"]: row for row in map(json.loads, (tmp_path / "glip-work" / "boxes.jsonl").read_text().splitlines())}
    assert set(table) == {"a-dog", "b-cat", "a-tennis ball"}
    assert all(set(row) == {"id", "boxes", "box_scores"} for row in table.values())
    assert table["a-dog"]["boxes"] == [[1, 2, 30, 40], [2, 2, 50, 44], [5, 5, 20, 20]]
    assert table["a-dog"]["box_scores"] == pytest.approx([0.9, 0.75, 0.6])
    assert table["b-cat"] == {"id": "b-cat", "boxes": [], "box_scores": []}
    assert table["a-tennis ball"] == {"id": "a-tennis ball", "boxes": [], "box_scores": []}

    # What the stage made of it: the dog kept with all three boxes, the others rejected the way
    # Grounding DINO's path rejects them, the unreadable image named by id.
    assert result.kept["id"].tolist() == ["a-dog"]
    dog = result.kept.iloc[0]
    assert dog["boxes"] == [[1.0, 2.0, 30.0, 40.0], [2.0, 2.0, 50.0, 44.0], [5.0, 5.0, 20.0, 20.0]]
    assert dog["box"] == [1.0, 2.0, 30.0, 40.0] and dog["box_score"] == pytest.approx(0.9)
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert reasons == {
        "b-cat": "no box scoring >= 0.6 for 'cat' in b.png",
        "a-tennis ball": "no box scoring >= 0.6 for 'tennis ball' in a.png",
        "broken-dog": "external grounder returned no result for 'broken-dog' ('dog' in broken.jpg)",
    }

    # GLIP was built and called as the seed does: config file, weights and device merged into
    # cfg, min_image_size 800, run from the GLIP repository, prompted with the label itself (not
    # our "label." prompt), the image as uint8 BGR of the original size.
    init, *calls = _calls(fake_glip_repo)
    assert init["init"] == [
        ["file", str(fake_glip_repo / "configs/pretrain/glip_Swin_L.yaml")],
        ["MODEL.WEIGHT", str(fake_glip_repo / "MODEL/glip_large_model.pth")],
        ["MODEL.DEVICE", "cuda"],
    ]
    assert init["min_image_size"] == 800 and init["show_mask_heatmaps"] is False
    assert init["cwd"] == str(fake_glip_repo)
    assert [c["caption"] for c in calls] == ["dog", "cat", "tennis ball"]
    for call in calls:
        assert call["shape"] == [48, 64, 3] and call["dtype"] == "uint8" and call["pixel"] == [30, 10, 200]


def test_the_glip_script_caps_boxes_and_names_missing_glip_files(fake_glip_repo, tmp_path):
    image_root, df = _images(tmp_path)
    result = run_external_grounder(
        df.iloc[:1], image_root, command=_command(fake_glip_repo), box_threshold=0.7, max_boxes=1,
        workdir=tmp_path / "w",
    )
    table = [json.loads(line) for line in (tmp_path / "w" / "boxes.jsonl").read_text().splitlines()]
    assert table == [{"id": "a-dog", "boxes": [[1.0, 2.0, 30.0, 40.0]], "box_scores": [pytest.approx(0.9)]}]
    assert result.kept["boxes"].tolist() == [[[1.0, 2.0, 30.0, 40.0]]]
    (fake_glip_repo / "MODEL" / "glip_large_model.pth").unlink()
    from groundflow.vision.grounding import GrounderError

    with pytest.raises(GrounderError, match=r"GLIP weights .*glip_large_model\.pth not found"):
        run_external_grounder(df.iloc[:1], image_root, command=_command(fake_glip_repo), box_threshold=0.7,
                              max_boxes=1, workdir=tmp_path / "w")
