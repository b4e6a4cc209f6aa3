"""The Triton contract (client/contract.py): the one place its names and formats are written, and what the rest
of the project must agree with."""

from __future__ import annotations

import pytest

from client import contract


def test_image_errors_round_trip_through_triton_wording():
    raised = contract.image_error("image_too_large", "12000x12000 is over the 40 MP limit")
    wrapped = f"in ensemble 'fast', {raised}"
    assert contract.find_image_error(wrapped) == (413, "image_too_large", "12000x12000 is over the 40 MP limit")
    assert contract.find_image_error("[invalid_image]") == (422, "invalid_image", "invalid image")
    assert contract.find_image_error("Stub process 'x' is not healthy.") is None
    with pytest.raises(ValueError, match="unknown image error code 'bad'"):
        contract.image_error("bad", "x")


def test_class_strings_keep_colons_in_labels():
    assert contract.parse_class(b"0.75:3:ice cream: vanilla") == (0.75, 3, "ice cream: vanilla")
    assert contract.parse_class("1:0:") == (1.0, 0, "")


def test_the_grpc_key_name_is_the_one_triton_reads():
    assert contract.GRPC_KEY_HEADER == "triton-grpc-protocol-vgg-triton-key"
    assert contract.KEY_HEADER.lower() == contract.KEY_HEADER


def test_the_default_pipeline_rule():
    assert contract.default_pipeline(["fusion", "fast"]) == "fast"
    assert contract.default_pipeline(["fusion", "multiscale"]) == "fusion"
    assert contract.default_pipeline(["fast"], configured="fusion") == "fusion"
    assert contract.default_pipeline([]) is None
