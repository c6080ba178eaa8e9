"""The typed configuration (models/config.py, pipeline/configs.py), the training-mode registry (models/modes.py)
and the task registry's settings check (pipeline/tasks.py)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from models import config, dotted, modes
from pipeline import tasks
from pipeline.configs import ALIASES, LEAVES, PRESETS, PipelineConfig, changed_paths, load_config, resolve_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_modules_import_neither_keras_nor_tensorflow():
    code = ("import sys; import pipeline.configs, models.config, models.modes; "
            "print([m for m in ('keras', 'tensorflow', 'jax', 'tfx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    assert out.strip() == "[]"


def test_from_dict_builds_nested_sections_and_names_unknown_keys():
    semi = dotted.from_dict(config.SemiConfig, {"method": "daso", "daso": {"warmup_steps": 7}, "fixmatch": {"mu": 3}})
    assert (semi.method, semi.daso.warmup_steps, semi.fixmatch.mu, semi.fixmatch.threshold) == ("daso", 7, 3, 0.95)
    assert dotted.from_dict(config.TrainConfig, {"learning_rate": 1}).learning_rate == 1.0  # JSON ints for floats
    with pytest.raises(ValueError, match=r"unknown settings \['train.lr'\]"):
        dotted.from_dict(config.TrainConfig, {"lr": 0.1}, "train.")
    with pytest.raises(ValueError, match=r"unknown settings \['pretrain.moco.k'\]"):
        dotted.from_dict(config.SSPConfig, {"moco": {"k": 64}}, "pretrain.")
    full = load_config("default")
    assert dotted.from_dict(PipelineConfig, json.loads(json.dumps(dataclasses.asdict(full)))) == full  # round trip


def test_parse_value_by_type_hint():
    assert dotted.parse_value("none", int | None) is None
    assert dotted.parse_value("3", int | None) == 3
    assert dotted.parse_value("off", bool) is False
    with pytest.raises(ValueError, match="not a boolean"):
        dotted.parse_value("maybe", bool)


def test_aliases_keep_the_old_names_working():
    assert resolve_key("semi") == "semi.method" and resolve_key("semi_threshold") == "semi.fixmatch.threshold"
    assert resolve_key("semi_supervised.daso_warmup_steps") == "semi.daso.warmup_steps"
    assert resolve_key("ssp") == "pretrain.method" and resolve_key("pretrain.ssp_epochs") == "pretrain.epochs"
    assert resolve_key("plan_ssp") == "semi.planner.ssp" and resolve_key("semi_pl_top_k") == "semi.pseudo_label.top_k"
    assert resolve_key("epochs") == "train.epochs" and resolve_key("loss") == "train.loss"  # README's bare names
    assert resolve_key("fds") == "regression.fds"  # unique anywhere: found by name
    assert all(target in LEAVES for target in ALIASES.values())
    with pytest.raises(KeyError, match="ambiguous"):
        resolve_key("threshold")
    with pytest.raises(KeyError, match="does not exist"):
        resolve_key("semi.daso.nope")


def test_presets_load_and_changed_paths_are_what_the_user_set():
    for name in PRESETS:
        assert changed_paths(load_config(name)) == [], name
    cfg = load_config("smoke", {"semi": "daso", "daso_warmup_steps": "3", "loss": "ce"})
    assert sorted(changed_paths(cfg)) == ["semi.daso.warmup_steps", "semi.method"]  # loss=ce is the smoke default
    assert load_config("smoke", {"semi": "none"}).semi.method == modes.SUPERVISED  # the old name of the mode


def test_every_mode_resolves_its_trainer_and_names_real_sections():
    for mode in modes.MODES.values():
        assert callable(mode.trainer()), mode.name
        for section in mode.settings:
            assert any(p.startswith(section + ".") for p in LEAVES), (mode.name, section)
    with pytest.raises(ValueError, match="unknown training mode"):
        modes.get("mixmatch")


@pytest.mark.parametrize("preset,overrides,message", [
    ("regression-smoke", {"loss": "focal"}, "train.loss does not apply to task=regression"),
    ("regression-smoke", {"train.learning_rate": "0.1"}, "train.learning_rate does not apply to task=regression"),
    ("regression-smoke", {"semi": "daso"}, "semi.method does not apply to task=regression"),
    ("smoke", {"regression.fds": "true"}, "regression.fds does not apply to task=classification"),
    ("smoke", {"semi": "fixmatch", "daso_warmup_steps": "3"},
     "semi.daso.warmup_steps does not apply to task=classification with semi.method=fixmatch"),
    ("smoke", {"semi_pl_weight": "0.5"}, "semi.pseudo_label.weight does not apply"),
    ("smoke", {"ssp_epochs": "4"}, "pretrain.epochs does not apply to task=classification with semi.method=supervised, "
                                   "pretrain.method=none"),
])
def test_a_setting_that_does_not_apply_is_an_error_naming_it(preset, overrides, message):
    from pipeline import tasks

    with pytest.raises(ValueError, match=message):
        tasks.for_config(load_config(preset, overrides))


@pytest.mark.parametrize("preset,overrides", [
    ("regression-smoke", {"epochs": "3", "train.seed": "2", "regression.fds": "false"}),
    ("smoke", {"semi": "daso", "daso_warmup_steps": "3", "semi_threshold": "0.9"}),
    ("smoke", {"ssp": "rotation", "ssp_epochs": "2"}),
    ("default", {"pretrain.epochs": "2", "plan_min_relevance": "0.5"}),  # auto may pre-train: pretrain.* applies
])
def test_settings_that_apply_are_accepted(preset, overrides):
    from pipeline import tasks

    cfg = load_config(preset, overrides)
    assert tasks.for_config(cfg).name == cfg.task


def test_cli_reports_a_setting_that_does_not_apply_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--preset", "regression-smoke", "--set", "loss=focal",
                           "--print-config"], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "error: train.loss does not apply to task=regression" in proc.stderr
    assert "regression.adam_learning_rate" not in proc.stdout


def test_beam_runner_is_pinned_and_its_args_come_from_the_config():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    cfg = load_config("smoke", {"beam_direct_running_mode": "in_memory"})  # the old flat name is an alias
    assert cfg.beam.args() == ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=2",
                               "--sdk_container_image=none:in-process"]
    with beam.Pipeline(options=PipelineOptions(cfg.beam.args())) as p:
        assert isinstance(p.runner, FnApiRunner)  # never Beam's default, which first downloads Prism from the web
        _ = p | beam.Create([1, 2, 3]) | beam.combiners.Count.Globally()
    # TFX's Beam executors take the in-process runner's dependencies as provided: no sdist of tfx built per component
    from tfx.utils import dependency_utils
    assert dependency_utils.make_beam_dependency_flags(cfg.beam.args()) == cfg.beam.args()
    own = load_config("smoke", {"beam.extra_args": "--requirements_file=req.txt",
                                "beam.direct_running_mode": "multi_processing"}).beam.args()
    assert "--requirements_file=req.txt" in own and not any(a.startswith("--sdk_container_image") for a in own)
    portable = load_config("smoke", {"beam.runner": "PortableRunner", "beam.job_endpoint": "localhost:8099",
                                     "beam.environment_type": "EXTERNAL", "beam.environment_config": "localhost:50000",
                                     "beam.extra_args": "--max_num_workers=4 --job_name='a b'"}).beam
    assert portable.args() == ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
                               "--environment_config=localhost:50000", "--max_num_workers=4", "--job_name=a b"]
    with pytest.raises(ValueError, match="downloads the Prism runner binary"):
        load_config("smoke", {"beam.runner": "DirectRunner"})
    with pytest.raises(ValueError, match="unknown beam.direct_running_mode"):
        load_config("smoke", {"beam.direct_running_mode": "threads"})


def test_beam_auto_runs_in_memory_up_to_its_bound_and_says_why():
    from pipeline.configs import IN_MEMORY_MAX_EXAMPLES

    beam = load_config("default").beam
    assert beam.direct_running_mode == "auto"
    with pytest.raises(ValueError, match="settled by BeamConfig.resolved_for"):
        beam.args()  # nothing below the resolution step sees auto
    small, why = beam.resolved_for(30_000)
    assert "--direct_running_mode=in_memory" in small.args() and "30000 input examples <= 50000" in why
    big, why = beam.resolved_for(IN_MEMORY_MAX_EXAMPLES + 1)
    assert "--direct_running_mode=multi_processing" in big.args() and "--direct_num_workers=2" in big.args()
    assert "2 worker processes" in why
    unknown, why = beam.resolved_for(None)  # no manifest (the regression CSV): the old default, said so
    assert unknown.direct_running_mode == "multi_processing" and "unknown" in why
    set_by_user = load_config("default", {"beam.direct_running_mode": "multi_threading"}).beam
    assert set_by_user.resolved_for(10) == (set_by_user, None)  # a mode the user chose is kept, nothing to say
    portable = load_config("default", {"beam.runner": "PortableRunner", "beam.job_endpoint": "localhost:8099"}).beam
    assert portable.resolved_for(10)[1] is None and "--direct_running_mode=auto" not in " ".join(portable.args())
    inputs = tasks.TaskInputs("x", {"splits": {"labeled": {"num_examples": 7}, "unlabeled": {"num_examples": 5}}})
    cfg, why = tasks.resolve_beam(load_config("default"), inputs)
    assert inputs.examples() == 12 and cfg.beam.direct_running_mode == "in_memory" and "12 input examples" in why


def test_augmentation_auto_flips_only_a_mirror_symmetric_source(tmp_path):
    assert load_config("default").train.augment == "crop,flip"  # Fashion-MNIST: a mirrored garment is the same class
    # another source's "auto" waits for its images' channels: crop, and colour distortion for colour images
    own = load_config("default", {"data.source": "folder:/data/digits"})
    assert own.train.augment == "auto" and own.train.test_time_flip == "off"
    assert tasks.augment_choice(own, [28, 28, 1]) == "crop" and tasks.augment_choice(own, [56, 56, 3]) == "crop,color"
    assert tasks.with_backbone(own, {"image_shape": [56, 56, 3]}).train.augment == "crop,color"
    assert tasks.with_backbone(own, {"image_shape": [56, 56, 3]}).train.backbone == "resnet20/s2"
    assert tasks.with_backbone(own, {"image_shape": [28, 28, 1]}).train.backbone == "resnet8"
    assert load_config("default", {"data.source": "tfrecord:/data/x"}).train.augment == "auto"
    prepared = tmp_path / "own"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({"source": "folder:/data/digits"}))
    assert load_config("default", {"data.data_dir": str(prepared)}).train.augment == "auto"  # the manifest's source
    assert load_config("default", {"train.augment": "false"}).train.augment == "none"
    assert load_config("default", {"train.augment": "crop,rand_augment,erase"}).train.augment == "crop,rand_augment,erase"
    assert config.augment_ops("none") == () and config.augment_ops("auto") == ("crop",)  # alone: no mirror assumed
    with pytest.raises(ValueError, match=r"train.augment: unknown augmentation \['spin'\]"):
        load_config("default", {"train.augment": "crop,spin"})
    # the test-time flip follows the resolved augmentation, and metrics.json records on or off
    assert load_config("default").train.test_time_flip == "on"
    assert load_config("default", {"data.data_dir": str(prepared)}).train.test_time_flip == "off"
    assert load_config("default", {"train.test_time_flip": "off"}).train.test_time_flip == "off"
    assert load_config("default", {"data.data_dir": str(prepared), "train.test_time_flip": "true"}).train.test_time_flip == "on"
    with pytest.raises(ValueError, match="unknown train.test_time_flip 'maybe'"):
        load_config("default", {"train.test_time_flip": "maybe"})


def test_own_data_keeps_its_distribution_and_a_validation_split_sized_to_it():
    own = load_config("default", {"data.source": "folder:/data/digits"}).data
    assert (own.rho, own.val_per_class) == (None, None)
    bench = load_config("default").data
    assert (bench.rho, bench.val_per_class) == (100.0, 300)  # the Fashion-MNIST benchmark's long tail
    given = load_config("default", {"data.source": "folder:/data/digits", "data.rho": "10", "data.val_per_class": "5"}).data
    assert (given.rho, given.val_per_class) == (10.0, 5)
    assert load_config("smoke", {"data.source": "tfrecord:/x"}).data.val_per_class == 20  # the preset sets it


def test_own_data_gets_a_pipeline_and_model_name_of_its_own():
    own = load_config("default", {"data.source": "folder:/srv/My Digits/"})
    assert (own.name, own.model_name) == ("longtail-my-digits", "longtail-my-digits")
    assert load_config("default", {"data.source": "tfds:cifar10"}).model_name == "longtail-cifar10"
    assert load_config("default", {"data.source": "tfrecord:gs://bucket/Shoes_v2/"}).name == "longtail-shoes-v2"
    bench = load_config("default")
    assert (bench.name, bench.model_name) == ("longtail-fmnist", "longtail")  # the benchmark keeps its names
    named = load_config("default", {"data.source": "folder:/srv/x", "name": "mine", "model_name": "m"})
    assert (named.name, named.model_name) == ("mine", "m")  # an explicit name wins
    smoke = load_config("smoke", {"data.source": "folder:/srv/x"})
    # a preset's names are its bundled data's; a preset other than the default's adds its own name to the data's
    assert (smoke.name, smoke.model_name) == ("longtail-x-smoke", "longtail-x-smoke")
    reg = load_config("regression-smoke", {"regression.csv_dir": "/srv/fares"})
    assert (reg.name, reg.model_name) == ("longtail-fares-regression-smoke", "longtail-fares-regression-smoke")
    assert load_config("regression", {"regression.csv_dir": "/srv/fares"}).model_name == "longtail-fares"
    assert load_config("regression-smoke").model_name == "taxi-smoke"


def test_every_preset_pushes_to_a_serving_folder_and_keeps_a_history_of_its_own():
    """issue #46: `make run PRESET=smoke` (gate floors at zero) once pushed into serving/longtail, the default's."""
    from pipeline.configs import PRESETS
    from pipeline.tasks import for_config

    for data in ({}, {"data.source": "folder:/srv/photos"}):
        seen = {}
        for preset in PRESETS:
            if preset.startswith("regression") and data:
                continue
            cfg = load_config(preset, dict(data))
            pipeline_name, model_name = for_config(cfg).names(cfg)
            assert pipeline_name not in {p for p, _ in seen.values()}, (preset, seen)
            assert model_name not in {m for _, m in seen.values()}, (preset, seen)
            seen[preset] = (pipeline_name, model_name)
        if not data:
            assert seen["default"] == ("longtail-fmnist", "longtail") and seen["smoke"][1] == "longtail-smoke"
        else:
            assert seen["default"][1] == "longtail-photos" and seen["smoke"][1] == "longtail-photos-smoke"
