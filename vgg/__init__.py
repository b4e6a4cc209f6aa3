"""The shared primitives below export/, train/ and server/: the VGG nets, image decoding and rescaling, the ONNX
runtimes and their optimized-model cache, and staging folders. Nothing here imports the rest of the project."""
