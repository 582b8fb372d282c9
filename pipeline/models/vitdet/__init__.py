"""ViTDet-H Cascade Mask R-CNN person detector in plain PyTorch, loading detectron2's model-zoo
checkpoint unchanged. Import `pipeline.models.vitdet.predictor` for the numpy-facing API."""
