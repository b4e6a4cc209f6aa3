"""Triton's failures as the gateway answers them: one shape, the right status, nothing of Triton's internals."""

from __future__ import annotations

from server.gateway.errors import from_triton
from server.gateway.triton_http import TritonHttpError

SHM_FULL = ("in ensemble 'fusion', Failed to increase the shared memory pool size for key 'vgg-serve-triton-1-x' to "
            "1048576 bytes. If you are running Triton inside docker, use '--shm-size' flag to control the shared "
            "memory region size. Error: No space left on device")


def test_a_full_dev_shm_is_a_retryable_503_that_names_the_fix():
    error = from_triton(TritonHttpError(500, SHM_FULL))
    assert (error.status, error.code, error.headers) == (503, "insufficient_shared_memory", {"Retry-After": "1"})
    assert "--shm-size" in error.message and "vgg-serve-triton" not in error.message


def test_an_image_fault_inside_triton_is_the_clients_4xx():
    error = from_triton(TritonHttpError(400, "in ensemble 'fast', [image_too_large] 9000x9000 is 81,000,000 pixels"))
    assert (error.status, error.code) == (413, "image_too_large")


def test_anything_else_is_a_502_without_tritons_words():
    error = from_triton(TritonHttpError(500, "onnxruntime: segmentation of something internal"))
    assert (error.status, error.code) == (502, "triton_error") and "onnxruntime" not in error.message
