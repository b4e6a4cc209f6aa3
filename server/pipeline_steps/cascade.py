"""Triton Python model: a cascade pipeline. Runs its stages in order and stops at the first confident one.

Triton's ensembles are fixed graphs and cannot branch, so this model calls the member models itself (business-logic
scripting). It decodes the image once, rescales it once per scale, and runs each (member, view) at most once: a view
an earlier stage evaluated is reused by the later stage. Each stage's posterior is fused exactly as that stage's
own pipeline fuses it (the same `fuse`). Outputs: `probs` (the answering stage's posterior), `stage` (its name) and
`stages` (the stages run, in order) and `stage_report` (each stage's confidence, threshold and times, for the
gateway's trace). Member calls carry the request's trace, so Triton's trace of a cascade holds every member run.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from client.contract import INPUT, LIMITS_PARAMETER, PROBS, SPEC_PARAMETER, STAGE_REPORT
from server.cascade_spec import Cascade, confidence, view_units
from server.pipeline_spec import Pipeline, posterior
from server.pipeline_steps.fuse import fuse
from server.pipeline_steps.preprocess import decode_request, view_tensor
from server.step_watch import Marker, watched
from vgg.imaging import ImageLimits


class StepFailed(Exception):
    """A member model's error, passed on with its own message (the gateway tells a restarting step by it)."""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.cascade = Cascade.from_json(parameters[SPEC_PARAMETER]["string_value"])
        self.limits = ImageLimits(**json.loads(parameters[LIMITS_PARAMETER]["string_value"]))
        self.marker = Marker(args["model_config"], calls_models=True)

    @watched
    async def execute(self, requests: list) -> list:
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request: object) -> object:
        image = decode_request(request, self.limits)
        if isinstance(image, str):
            return _error(image)
        rescaled: dict[int, np.ndarray] = {}
        evaluated: dict[tuple, np.ndarray] = {}
        run: list[str] = []
        report: list[bytes] = []
        cascade = self.cascade
        trace = request.trace()
        try:
            for index, stage in enumerate(cascade.stage_pipelines):
                started = time.time_ns()
                posteriors = await self._evaluate(stage, image, rescaled, evaluated, trace)
                probs = fuse(stage, posteriors)
                run.append(stage.name)
                last = index == len(cascade.stage_pipelines) - 1
                sure = confidence(probs, cascade.rule)
                threshold = None if last else cascade.thresholds[index]
                report.append(json.dumps({"stage": stage.name, "confidence": sure, "threshold": threshold,
                                          "rule": cascade.rule, "start_ns": started,
                                          "end_ns": time.time_ns()}).encode())
                if threshold is None or sure > threshold:
                    break
        except StepFailed as exc:
            return _error(str(exc), pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(PROBS, probs),
            pb_utils.Tensor("stage", np.array([run[-1].encode()], dtype=np.object_)),
            pb_utils.Tensor("stages", np.array([name.encode() for name in run], dtype=np.object_)),
            pb_utils.Tensor(STAGE_REPORT, np.array(report, dtype=np.object_))])

    async def _evaluate(self, stage: Pipeline, image: object, rescaled: dict[int, np.ndarray],
                        evaluated: dict[tuple, np.ndarray], trace: object) -> dict[str, np.ndarray]:
        """The stage's fuse inputs `m{member}_{view}`, running only the rows (a view, or its mirror) that no earlier
        stage evaluated. Each member call goes out as soon as its tensor is ready, so the next view is rescaled while
        the member computes the last one."""
        wanted, calls = {}, []
        for index, member in enumerate(stage.members):
            for view in stage.views():
                units = view_units(member, view)
                wanted[posterior(index, view)] = units
                missing = [i for i, unit in enumerate(units) if unit not in evaluated]
                if missing:
                    tensor = view_tensor(view, image, rescaled)
                    if len(missing) < len(units):  # one half of [originals; mirrors]
                        half = len(tensor) // len(units)
                        tensor = tensor[missing[0] * half:(missing[0] + 1) * half]
                    call = asyncio.ensure_future(self._infer(member, tensor, trace))
                    calls.append(([units[i] for i in missing], call))
                    await asyncio.sleep(0)  # let the call go out before the next rescale
        results = await asyncio.gather(*(call for _, call in calls))
        for (units, _), probs in zip(calls, results, strict=True):
            for unit, rows in zip(units, np.split(probs, len(units)), strict=True):
                evaluated[unit] = rows
        return {name: np.concatenate([evaluated[unit] for unit in units]) for name, units in wanted.items()}

    @staticmethod
    async def _infer(member: str, tensor: np.ndarray, trace: object) -> np.ndarray:
        request = pb_utils.InferenceRequest(model_name=member, requested_output_names=[PROBS],
                                            inputs=[pb_utils.Tensor(INPUT, tensor)], trace=trace)
        response = await request.async_exec()
        if response.has_error():
            raise StepFailed(response.error().message())
        return pb_utils.get_output_tensor_by_name(response, PROBS).as_numpy()


def _error(message: str, code: int | None = None) -> object:
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
