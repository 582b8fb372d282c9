"""Parts shared by our detectron2-style detectors (ViTDet, RegNetY Mask R-CNN): box arithmetic,
anchors and proposals, ROI pooling, the conv/fc box and mask heads, per-class selection, and
the image-level pre/post-processing around a network."""
