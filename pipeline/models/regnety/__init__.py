"""RegNetY-4GF Mask R-CNN person detector (4D-Humans' fast ``regnety`` detector) in plain
PyTorch, loading detectron2's model-zoo checkpoint unchanged. Import
`pipeline.models.regnety.predictor` for the numpy-facing API."""
