"""The `<pipeline>_maps` ensemble: the pipeline's own steps, also answering every member's dense class score maps.

The member models already compute the score map (`scores` [views, classes, h, w]) on the way to their posterior,
so the maps ensemble is the pipeline's ensemble with those tensors mapped out as extra outputs: no second
implementation of the protocol, and the plain ensemble (which does not ask for them) pays nothing. Only dense views
have maps worth showing (a crop at the training size gives one cell), so only pipelines with dense views get one.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from client.contract import SPEC_PARAMETER
from server.pipeline_spec import Pipeline

if TYPE_CHECKING:  # the gateway reads the constants below without loading tritonclient's gRPC stack
    from tritonclient.grpc import model_config_pb2 as mc

MAPS_SUFFIX = "_maps"
MAPS_OF = "maps.of"  # the pipeline whose maps this ensemble answers; it carries no pipeline.spec of its own
MAPS_GEOMETRY = "maps.geometry"
NET_STRIDE = 32  # five 2x2 max-pools: one score-map cell per 32 input pixels in every VGG configuration
_DENSE_POSTERIOR = re.compile(r"^m(\d+)_dense_(\d+)$")


def maps_tensor(posterior: str) -> str:
    """The ensemble output holding the score maps of the view whose posterior is `posterior` (m{i}_dense_{Q})."""
    return f"{posterior}_scores"


def maps_ensemble_config(ensemble: mc.ModelConfig, pipeline: Pipeline,
                         windows: dict[str, int]) -> mc.ModelConfig:
    """The maps twin of the pipeline's ensemble config. windows: member -> training size (the window each cell sees:
    fc6 spans training size / 32 cells of the last feature map)."""
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig()
    config.CopyFrom(ensemble)
    config.name = pipeline.name + MAPS_SUFFIX
    num_classes = list(ensemble.output[0].dims)[-1]
    views = []
    for step in config.ensemble_scheduling.step:
        match = _DENSE_POSTERIOR.match(step.output_map.get("probs", ""))
        if not match:
            continue
        name = maps_tensor(step.output_map["probs"])
        step.output_map["scores"] = name
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=[-1, num_classes, -1, -1])
        member = pipeline.members[int(match.group(1))]
        views.append({"tensor": name, "member": member, "index": int(match.group(1)), "scale": int(match.group(2)),
                      "window": windows[member]})
    geometry = {"model": config.name, "stride": NET_STRIDE, "weights": pipeline.member_weights(), "views": views}
    del config.parameters[SPEC_PARAMETER]
    config.parameters[MAPS_OF].string_value = pipeline.name
    config.parameters[MAPS_GEOMETRY].string_value = json.dumps(geometry, sort_keys=True)
    return config
