"""Video in the pipeline: decoding (`decode`), the one chunked loop (`loop`), result files
(`results`, `npz`) and the in-process runner (`runner`)."""
