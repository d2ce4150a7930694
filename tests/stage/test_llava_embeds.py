"""Images encoded once and spliced into each row give the model's own outputs for pixel_values per row."""
import pytest
import torch
from PIL import Image

from groundflow.models.llava import build_tiny_llava, load_llava
from groundflow.models.llava_embeds import embed_with_images, encode_images
from groundflow.models.spec import ModelSpec


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    path = build_tiny_llava(tmp_path_factory.mktemp("embeds") / "tiny-llava", seed=0, texts=["a red square"])
    return load_llava(ModelSpec.from_config({"path": str(path), "device": "cpu"}))


def _images():
    return [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 30, 220))]


def test_shared_features_match_per_row_pixel_values(llava):
    model, processor = llava
    texts = ["USER: <image>\nwhat is red? ASSISTANT:", "USER: <image>\nwhat is it ASSISTANT: a", "USER: no image here ASSISTANT:"]
    image_of_row = [0, 1, None]
    images = _images()
    processor.tokenizer.padding_side = "left"
    per_row = processor(images=[images[0], images[1]], text=texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**per_row).logits
        features = encode_images(model, processor.image_processor(images=images, return_tensors="pt")["pixel_values"])
        embeds = embed_with_images(model, per_row["input_ids"], features, image_of_row)
        got = model(inputs_embeds=embeds, attention_mask=per_row["attention_mask"]).logits
    assert features.shape[0] == 2
    mask = per_row["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5)
    # a row pointed at the other image gets other outputs: the splice is per row
    swapped = embed_with_images(model, per_row["input_ids"], features, [1, 1, None])
    with torch.inference_mode():
        other = model(inputs_embeds=swapped, attention_mask=per_row["attention_mask"]).logits
    assert not torch.allclose(other[0][mask[0]], expected[0][mask[0]], atol=1e-4)


def test_rows_and_placeholders_must_agree(llava):
    model, processor = llava
    ids = processor(text=["USER: <image>\nq ASSISTANT:"], images=_images()[:1], return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="row 0 has no image but holds"):
        embed_with_images(model, ids, None, [None])
    with pytest.raises(ValueError, match="1 rows but 2 image indices"):
        embed_with_images(model, ids, None, [0, 0])
