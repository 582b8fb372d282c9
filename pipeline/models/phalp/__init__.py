"""PHALP's networks: the appearance encoder (HMAR), the UV texture sampler, the pose predictor,
their checkpoint conversion (`convert`), files (`files`) and loading (`loading`)."""
