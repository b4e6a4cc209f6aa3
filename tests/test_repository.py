"""The spec-driven repository generator: idempotent, declarative, and strict about what it is given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TESTS
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from server.pipeline_spec import SpecError
from server.repository import generate
from server.repository import main as repository_main
from server.spec_file import load_spec
from vgg.runtimes import SessionSettings


@pytest.fixture()
def repository(triton_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the session's test repository, free to be modified."""
    copy = tmp_path / "repository"
    shutil.copytree(triton_repository, copy)
    return copy


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def parse(model: Path) -> mc.ModelConfig:
    return text_format.Parse((model / "config.pbtxt").read_text(), mc.ModelConfig())


def test_second_run_changes_nothing(repository):
    spec = load_spec(TESTS / "pipelines.toml")
    before = {p: p.stat().st_mtime_ns for p in repository.rglob("*") if p.is_file()}
    assert generate(spec, repository) == []
    assert {p: p.stat().st_mtime_ns for p in repository.rglob("*") if p.is_file()} == before


def test_ensemble_wiring_follows_the_spec(repository):
    config = parse(repository / "fusion")
    steps = [s.model_name for s in config.ensemble_scheduling.step]
    assert steps[0] == "preprocess" and steps[-1] == "fuse"
    assert sorted(steps[1:-1]) == sorted(["vgg_a", "vgg_d", "vgg_e"] * 3)  # 3 members x 3 scales
    assert config.max_batch_size == 0 and config.input[0].data_type == mc.TYPE_STRING
    assert config.output[0].label_filename == "labels.txt"
    assert (repository / "fusion" / "labels.txt").read_text().startswith("digit_0\n")


def test_removed_pipeline_is_cleaned_up_and_members_stay(repository, tmp_path):
    path = spec_file(tmp_path, '[pipelines.only]\nmembers = ["vgg_a"]\nscales = [64]\n')
    changed = generate(load_spec(path), repository)
    assert any("fusion (removed)" in c for c in changed)
    names = sorted(p.name for p in repository.iterdir())
    assert names == ["fuse", "only", "only_maps", "preprocess", "vgg_a", "vgg_d", "vgg_e"]


def test_every_pipeline_shares_one_preprocess_and_one_fuse_step(repository, tmp_path):
    """Views are told apart by their recipe (two pipelines at Q=64 with and without flips get two outputs), and
    each ensemble maps out only its own views and its own fused output."""
    path = spec_file(tmp_path, '[pipelines.b_one]\nmembers = ["vgg_a"]\nscales = [64, 96]\nflips = true\n'
                               '[pipelines.a_other]\nmembers = ["vgg_d"]\nscales = [64]\n'
                               '[pipelines.c_pair]\nmembers = ["vgg_a", "vgg_d"]\nscales = [64]\n'
                               'mode = "multi-crop"\ngrid = 2\npreprocess_instances = 3\n')
    generate(load_spec(path), repository)
    names = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())
    assert names == ["a_other", "a_other_maps", "b_one", "b_one_maps", "c_pair", "fuse", "preprocess",
                     "vgg_a", "vgg_d", "vgg_e"]
    preprocess = parse(repository / "preprocess")
    assert [o.name for o in preprocess.output] == ["crops_64_64x2", "dense_64", "dense_64_flip", "dense_96_flip"]
    assert preprocess.instance_group[0].count == 3  # the most any pipeline asks for
    fuse = parse(repository / "fuse")
    assert [o.name for o in fuse.output] == ["probs_a_other", "probs_b_one", "probs_c_pair"]
    assert all(i.optional for i in fuse.input) and not (repository / "fuse" / "labels.txt").exists()
    wiring = {"a_other": ({"dense_64": "dense_64"}, "probs_a_other"),
              "b_one": ({"dense_64_flip": "dense_64", "dense_96_flip": "dense_96"}, "probs_b_one"),
              "c_pair": ({"crops_64_64x2": "crops_64"}, "probs_c_pair")}
    for pipeline, (views, fused) in wiring.items():
        steps = parse(repository / pipeline).ensemble_scheduling.step
        assert (steps[0].model_name, steps[-1].model_name) == ("preprocess", "fuse")
        assert dict(steps[0].output_map) == views and dict(steps[-1].output_map) == {fused: "probs"}
        assert set(steps[-1].input_map) <= {i.name for i in fuse.input}
    assert generate(load_spec(path), repository) == []


@pytest.mark.parametrize("table", ["models", "pipelines"])
@pytest.mark.parametrize("name", ["preprocess", "fuse"])
def test_the_shared_steps_names_are_taken(tmp_path, table, name):
    entry = '[models.vgg_a]\n' if table == "models" else ""
    text = entry + f'[{table}.{name}]\n' + ('members = ["vgg_a"]\nscales = [64]\n' if table == "pipelines" else "")
    with pytest.raises(SpecError, match=f"{table}.{name}: the name '{name}' is taken by the step model"):
        load_spec(spec_file(tmp_path, text))


BAD_SPECS = {
    "unknown member": ('[pipelines.p]\nmembers = ["vgg_z"]\nscales = [64]\n', "model 'vgg_z' is not in"),
    "scale too small": ('[pipelines.p]\nmembers = ["vgg_a"]\nscales = [32, 64]\n',
                        "scale 32 is below the members' training size 64"),
    "bad mode": ('[pipelines.p]\nmembers = ["vgg_a"]\nscales = [64]\nmode = "sparse"\n', "mode 'sparse' is not one of"),
    "weights": ('[pipelines.p]\nmembers = ["vgg_a", "vgg_d"]\nweights = [1]\nscales = [64]\n',
                "weights must be one positive number per member"),
    "unknown field": ('[pipelines.p]\nmembers = ["vgg_a"]\nscales = [64]\nflip = true\n',
                      "pipelines.p: unknown key 'flip'; known keys: members, scales, "),
    "unknown table": ('[pipeline.p]\nmembers = ["vgg_a"]\nscales = [64]\n[pipelines.q]\nmembers = ["vgg_a"]\n'
                      'scales = [64]\n', "unknown table [pipeline]; a spec has [limits], [models], [pipelines]"),
    "not a list": ('[pipelines.p]\nmembers = ["vgg_a"]\nscales = "80"\n', "scales must be a list, e.g. scales = ["),
    "missing checkpoint": ('[models.vgg_new]\ncheckpoint = "models/demo/nope.pt"\n[pipelines.p]\n'
                           'members = ["vgg_new"]\nscales = [64]\n',
                           "models.vgg_new: checkpoint /"),
    "crop": ('[pipelines.p]\nmembers = ["vgg_a"]\nscales = [64]\nmode = "multi-crop"\ncrop_size = 96\n',
             "crop_size 96 must be between 64 and the smallest scale"),
    "toml": ("[pipelines.p\n", "invalid TOML"),
    "variant": ('[models.m]\nvariants = ["int4"]\ncalibration = "x"\n[pipelines.p]\nmembers = ["vgg_a"]\n'
                'scales = [64]\n', "models.m: variants ['int4'] are not among int8, bf16"),
    "calibration": ('[models.m]\nvariants = ["int8"]\n[pipelines.p]\nmembers = ["vgg_a"]\nscales = [64]\n',
                    "models.m: variants need calibration"),
    "arena": ('[models.m]\nmem_arena = "off"\n[pipelines.p]\nmembers = ["vgg_a"]\nscales = [64]\n',
              "models.m: mem_arena must be true or false, got 'off'"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_specs_fail_clearly_and_write_nothing(repository, tmp_path, case, capsys):
    text, message = BAD_SPECS[case]
    before = sorted(str(p) for p in repository.rglob("*"))
    assert repository_main(["--spec", str(spec_file(tmp_path, text)), "--repository", str(repository)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("repository: error: ") and message in error and len(error.strip().splitlines()) == 1
    assert sorted(str(p) for p in repository.rglob("*")) == before


def test_spec_errors_name_the_pipeline(tmp_path):
    with pytest.raises(SpecError, match=r"pipelines\.mine: scales must be positive integers"):
        load_spec(spec_file(tmp_path, '[pipelines.mine]\nmembers = ["a"]\nscales = [0]\n'))


def test_gpu_target_covers_every_shape_the_pipelines_send_and_reverts(repository):
    spec = load_spec(TESTS / "pipelines.toml")
    cpu_config = (repository / "vgg_d" / "config.pbtxt").read_text()
    generate(spec, repository, target="gpu")
    config = parse(repository / "vgg_d")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    (tensorrt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert tensorrt.name == "tensorrt" and tensorrt.parameters["precision_mode"] == "FP16"
    assert tensorrt.parameters["trt_engine_cache_enable"] == "1"
    profiles = [[tuple(int(d) for d in shape.split(":")[1].split("x")) for shape in
                 tensorrt.parameters[f"trt_profile_{kind}_shapes"].split(",")] for kind in ("min", "max")]
    # vgg_d serves fast (64, no flips), multiscale (64/96/128 with flips) and multicrop (5x5 crops with flips)
    sent = [(2, 3, 128, 170), (1, 3, 64, 64), (50, 3, 64, 64), (2, 3, 64, 640 // 5)]
    for shape in sent:
        assert any(all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True))
                   for low, high in zip(*profiles, strict=True)), shape
    warmups = {(w.batch_size, *w.inputs["image"].dims) for w in config.model_warmup}
    assert {(2, 3, 128, 170), (50, 3, 64, 64), (1, 3, 64, 85)} <= warmups
    preprocess = parse(repository / "preprocess")
    assert preprocess.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert generate(spec, repository, target="gpu") == []
    generate(spec, repository, target="cpu")
    assert (repository / "vgg_d" / "config.pbtxt").read_text() == cpu_config


def test_variants_are_exported_on_demand_and_never_rewrite_a_served_model(tmp_path):
    """A spec naming <model>_int8 gets it exported from the checkpoint, calibrated on the spec's folder; models
    already in the repository keep their files and version, and int8 stays on the CPU for the GPU target."""
    repository = tmp_path / "repository"
    source = ('[models.demo_a]\ncheckpoint = "models/demo/vgg_a.pt"\nlabels = "models/demo/labels.txt"\n'
              'variants = ["int8"]\ncalibration = "models/demo/calibration"\nmem_arena = false\n')
    generate(load_spec(spec_file(tmp_path, source + '[pipelines.q8]\nmembers = ["demo_a_int8"]\nscales = [64]\n')),
             repository)
    assert (repository / "demo_a_int8" / "1" / "model.onnx").exists() and not (repository / "demo_a").exists()
    int8_config = (repository / "demo_a_int8" / "config.pbtxt").read_text()
    assert 'string_value: "int8"' in int8_config
    served = json_format.MessageToDict(text_format.Parse(int8_config, mc.ModelConfig()),
                                       preserving_proto_field_name=True)
    assert not SessionSettings.from_model_config(served, {}).mem_arena  # the spec's mem_arena reaches the session
    spec = load_spec(spec_file(tmp_path, source + '[pipelines.q8]\nmembers = ["demo_a_int8"]\nscales = [64]\n'
                                                  '[pipelines.f32]\nmembers = ["demo_a"]\nscales = [64]\n'))
    generate(spec, repository)
    assert (repository / "demo_a" / "1" / "model.onnx").exists()
    assert sorted(p.name for p in (repository / "demo_a_int8").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert (repository / "demo_a_int8" / "config.pbtxt").read_text() == int8_config
    assert not list(tmp_path.glob(".export-*")), "staging repositories are removed"
    generate(spec, repository, target="gpu")
    assert (repository / "demo_a_int8" / "config.pbtxt").read_text() == int8_config
    assert "KIND_GPU" in (repository / "demo_a" / "config.pbtxt").read_text()
