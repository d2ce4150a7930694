"""Vision stages: image IO, grounding detection, SAM segmentation, occlusion."""
