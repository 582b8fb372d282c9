"""Drawing results: image and video overlays (`overlay`) on the project's rasterizer (`pipeline.raster`, no OpenGL)."""
