"""The configuration schema (workflow/schemas/config.schema.yaml): the shipped presets validate,
mistakes are rejected at start-up naming the key, and config values are never run as code."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, copy_workflow, ssrl_env
from snakemake.utils import update_config

from ssrl.files import InputError

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
PWNED = Path("/tmp/ssrl-test-config-pwned")
EVIL = f"__import__('os').system('touch {PWNED}')"


def merged(*files: str, extra: dict | None = None) -> dict:
    """config.yaml with preset files merged over it, as `--configfile` does."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for name in files:
        update_config(cfg, yaml.safe_load((REPO / name).read_text()))
    update_config(cfg, copy.deepcopy(extra or {}))
    return cfg


def errors(cfg: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(cfg)]


@pytest.mark.parametrize("files", [(), ("config/smoke.yaml",), ("config/voxceleb.yaml",),
                                   ("config/claims.yaml",), ("config/slurm-example.yaml",),
                                   ("config/slurm-cpu.yaml",), ("config/scaling.yaml",),
                                   ("config/scaling.yaml", "config/scaling-large.yaml")])
def test_presets_validate(files):
    assert errors(merged(*files)) == []


def test_every_preset_key_is_in_the_schema():
    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("trials", "builtin"):
                out |= keys(v, f"{prefix}{k}.")
        return out

    def schema_keys(s: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in s.get("properties", {}).items():
            out.add(prefix + k)
            out |= schema_keys(v, f"{prefix}{k}.")
        return out

    known = schema_keys(SCHEMA)
    for name in ("config.yaml", "config/smoke.yaml", "config/voxceleb.yaml",
                 "config/claims.yaml", "config/slurm-example.yaml", "config/slurm-cpu.yaml",
                 "config/scaling.yaml", "config/scaling-large.yaml"):
        assert keys(yaml.safe_load((REPO / name).read_text())) - known == set(), name


@pytest.mark.parametrize("extra, message", [
    ({"ssrl": {"epochs": -1}}, "ssrl.epochs: -1 is less than the minimum of 1"),
    ({"dino": {"batch_size": "big"}}, "dino.batch_size: 'big' is not of type 'integer'"),
    ({"ssrl": {"queue_lenght": 5}},
     "ssrl: Additional properties are not allowed ('queue_lenght' was unexpected)"),
    ({"runtime": {"device": "tpu"}}, "runtime.device: 'tpu' does not match"),
    ({"ablation": {"variants": [{"ema": False}]}},
     "ablation.variants.0: 'name' is a required property"),
    ({"ablation": {"variants": [{"name": "x", "queue_len": 0}]}},
     "ablation.variants.0.queue_len: 0 is less than the minimum of 1"),
])
def test_mistakes_name_the_key(extra, message):
    found = errors(merged("config/smoke.yaml", extra=extra))
    assert len(found) == 1 and found[0].startswith(message), found


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("config") / "wf")


def dry_run(wf: Path, *config: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake -n` on the smoke preset, plus `extra` as one more config file and `config`
    as `--config` entries."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1"]
    if config:
        cmd += ["--config", *config]
    cmd += ["--configfile", "config/smoke.yaml"]
    if extra is not None:
        (wf / "extra.yaml").write_text(yaml.safe_dump(extra))
        cmd.append("extra.yaml")
    return subprocess.run(cmd, cwd=wf, env=ssrl_env(), capture_output=True, text=True,
                          timeout=120, check=False)


def test_snakemake_accepts_the_smoke_preset(workflow_copy):
    proc = dry_run(workflow_copy)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M))
    assert jobs["dino"] == "1" and jobs["ssrl"] == "2" and jobs["iterative_round"] == "2"
    assert not (workflow_copy / "results").exists()  # a dry run writes nothing


# Each snakemake start costs seconds: the full list of mistakes is checked against the schema
# directly above; these two show that the workflow itself stops on them.
@pytest.mark.parametrize("config, extra, expected", [
    ((), {"ssrl": {"epochs": -3}}, ["-3 is less than the minimum of 1", "'ssrl'", "'epochs'"]),
    (("bogus_key=1",), None,
     ["Additional properties are not allowed ('bogus_key' was unexpected)"]),
])
def test_snakemake_rejects_bad_config(workflow_copy, config, extra, expected):
    proc = dry_run(workflow_copy, *config, extra=extra)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Error validating config file" in out
    for text in expected:
        assert text in out, out[-3000:]


def test_config_values_are_not_evaluated(workflow_copy, tmp_path, capsys):
    import json
    import signal

    from ssrl.cli import main

    PWNED.unlink(missing_ok=True)
    # a name field: rejected by its pattern before anything runs
    found = errors(merged("config/smoke.yaml", extra={"experiment": EVIL}))
    pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    assert found == [f"experiment: {EVIL!r} does not match {pattern!r}"]
    proc = dry_run(workflow_copy, extra={"experiment": EVIL})
    assert proc.returncode == 1
    assert f"does not match {pattern!r}" in proc.stdout + proc.stderr
    # a free-text field holds a path: valid config, read as a (missing) folder when used
    kaldi = {"data": {"source": "kaldi", "kaldi": {"train": EVIL, "test": EVIL}}}
    cfg = merged("config/smoke.yaml", extra=kaldi)
    assert errors(cfg) == []
    proc = dry_run(workflow_copy, extra=kaldi)  # a missing path: found at start-up
    assert proc.returncode == 1
    assert f"Invalid config: config key data.kaldi.train: {EVIL} not found" in proc.stdout
    job = tmp_path / "prepare.json"
    job.write_text(json.dumps({"data": cfg["data"]}))
    saved = signal.getsignal(signal.SIGTERM)
    try:
        rc = main(["prepare", "--job", str(job), "--set", "train", "--out", str(tmp_path / "d")])
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert rc == 2
    assert capsys.readouterr().err == f"ssrl prepare: error: {EVIL}: data folder not found\n"
    assert not PWNED.exists()


def test_every_value_in_every_shell_command_is_quoted():
    """The root of the injection fix: no rule interpolates a value unquoted into its shell
    command (`{x:q}` everywhere), and no rule passes config as text on the command line."""
    found = 0
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.findall(r"^    shell:\n((?:        .*\n)+)", text, re.M):
            fields = re.findall(r"\{([^{}]*)\}", block)
            found += len(fields)
            assert all(f.endswith(":q") for f in fields), (smk.name, fields)
            assert "--cfg" not in block and "json" not in block.replace("{params.json:q}", "")
        # settings reach a job through its config file, never as flags built from the config
        for block in re.findall(r"^    params:\n((?:        .*\n)+)", text, re.M):
            assert "config[" not in block and "NORM" not in block, (smk.name, block)
    assert found > 60


@pytest.mark.slow
def test_injection_attempts_create_nothing(tmp_path):
    """Shell code in several keys, run for real through the data rules: it stays text."""
    wf = copy_workflow(tmp_path / "wf")
    pwned = tmp_path / "PWNED"
    attack = f"$(touch {pwned})"
    quoted = f"'$(touch {pwned})'"
    # the data folders exist (start-up checks them) and name audio that does not: the
    # injected names reach the preparation job's command, which fails on the first file
    train, test = tmp_path / f"train{quoted}", tmp_path / f"x`touch {pwned}`"
    for folder in (train, test):
        folder.mkdir(parents=True)
        (folder / "wav.scp").write_text("".join(f"u{i} missing{i}.wav\n" for i in range(40)))
    extra = {"results_dir": f"rd{attack}",
             "data": {"source": "kaldi", "kaldi": {"train": str(train), "test": str(test)}},
             "tracking": {"uri": f"sqlite:///{tmp_path}/t{quoted}.db"},
             "runtime": {"partition": f"gpu;touch {pwned}"}}
    (wf / "extra.yaml").write_text(yaml.safe_dump(extra))
    cmd = [str(Path(sys.executable).parent / "snakemake"), f"rd{attack}/smoke/data/train",
           "--cores", "1", "--configfile", "config/smoke.yaml", "extra.yaml"]
    proc = subprocess.run(cmd, cwd=wf, env=ssrl_env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1  # the train folder's audio does not exist
    log = wf / f"rd{attack}" / "smoke" / "logs" / "prepare_data_train.log"
    assert "missing0.wav" in log.read_text(), proc.stderr[-3000:]
    assert not pwned.exists()
    assert (wf / f"rd{attack}" / "smoke" / "jobs" / "prepare" / "train.json").is_file()


@pytest.mark.parametrize("extra, message", [
    ({"experiment": ".."}, "experiment: '..' does not match"),
    ({"experiment": ".hidden"}, "experiment: '.hidden' does not match"),
    ({"ablation": {"variants": [{"name": "full", "ema": False}]}},
     "ablation.variants.0.name: 'full' is reserved for the full method"),
    ({"ablation": {"variants": [{"name": "a", "ema": False}, {"name": "a", "queue_len": 1}]}},
     "ablation.variants.1.name: 'a' is used by an earlier variant"),
    ({"ablation": {"variants": [{"name": "same", "noisy_label_modeling": True}]}},
     "ablation.variants.0: variant 'same' has the same switches as 'full'"),
    ({"ablation": {"variants": [{"name": "x", "queue_len": 1}, {"name": "y", "queue_len": 1}]}},
     "ablation.variants.1: variant 'y' has the same switches as 'x'"),
    ({"cluster": {"k": 37}}, "cluster.k: 37 clusters but only 36 training utterances"),
    ({"ablation": {"variants": [{"name": "big", "init_k": 40}]}},
     "ablation.variants.0.init_k: 40 clusters but only 36 training utterances"),
    ({"ssrl": {"student_seconds": 0.001}}, "ssrl.student_seconds: 0.001 s is shorter"),
    ({"ssrl": {"hold_epochs": 1}}, "ssrl.hold_epochs: 1 is too short for queue_len 3"),
    ({"ssrl": {"record_from_epoch": 1}}, "ssrl.record_from_epoch: 1 is later than"),
    ({"ssrl": {"batch_size": 100000000}},
     "ssrl.batch_size: 100000000 is greater than the maximum of 65536"),
    ({"dino": {"batch_size": 100000000}},
     "dino.batch_size: 100000000 is greater than the maximum of 65536"),
    ({"ssrl": {"batch_size": 37}}, "ssrl.batch_size: a batch of 37 utterances but only 36 "
                                   "training utterances (each batch would repeat utterances)"),
    ({"dino": {"batch_size": 40}}, "dino.batch_size: a batch of 40 utterances but only 36"),
    # a preset's momentum under config.yaml's lag (or the reverse) is never dropped silently
    ({"ssrl": {"momentum_start": 0.999}},
     "ssrl.teacher_lag_epochs: [0.44, 4.4] would silently replace ssrl.momentum_start = 0.999;"
     " set one of them and the other to null"),
    ({"dino": {"teacher_lag_epochs": [1.0, 2.0]}},
     "dino.teacher_lag_epochs: [1.0, 2.0] would silently replace dino.momentum_start = 0.99, "
     "dino.momentum_end = 0.999"),
    # init_k relative to cluster.k (8 here)
    ({"ablation": {"variants": [{"name": "big", "init_k": "5x"}]}},
     "ablation.variants.0.init_k: 40 clusters but only 36 training utterances"),
    ({"ablation": {"variants": [{"name": "tiny", "init_k": "0.1x"}]}},
     "ablation.variants.0.init_k: 1 clusters (from cluster.k = 8); at least 2 are needed"),
    ({"ablation": {"variants": [{"name": "x", "init_k": "1x"}]}},
     "ablation.variants.0: variant 'x' has the same switches as 'full'"),
    ({"ablation": {"variants": [{"name": "x", "init_k": "0.75"}]}},
     "ablation.variants.0.init_k: '0.75' is not valid under any of the given schemas"),
])
def test_start_up_rejects_configs_that_would_break_or_mislead(extra, message):
    """Names that escape the layout, a variant that would replace or duplicate another, and
    relations known before training (k against the data, crop lengths, the SSRL timetable)
    are refused when the workflow starts, naming the key."""
    from ssrl.config import check_config, validate

    cfg = merged("config/smoke.yaml", extra=extra)
    found = errors(cfg)
    if found:
        assert any(f.startswith(message) for f in found), found
        return
    b = cfg["data"]["builtin"]
    with pytest.raises(InputError) as err:
        check_config(validate(cfg), b["train_speakers"] * b["train_utts_per_speaker"])
    assert str(err.value).startswith(f"config key {message}"), str(err.value)


def test_snakemake_stops_on_a_reserved_variant_name(workflow_copy):
    proc = dry_run(workflow_copy, extra={"ablation": {"variants": [{"name": "full",
                                                                    "ema": False}]}})
    assert proc.returncode == 1
    assert ("Invalid config: config key ablation.variants.0.name: 'full' is reserved"
            in proc.stdout + proc.stderr)


@pytest.mark.slow
def test_the_documented_slurm_command_dry_runs(workflow_copy):
    """The README's SLURM command: an overlay file (Snakemake's --config would pass the
    numbers as strings), the slurm profile and its pinned executor plugin."""
    overlay = REPO / "config" / "slurm-example.yaml"
    readme = (REPO / "README.md").read_text()
    assert "--configfile config/voxceleb.yaml config/slurm-example.yaml" in readme
    shutil.copytree(REPO / "profiles", workflow_copy / "profiles", dirs_exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--profile", "profiles/slurm",
           "--configfile", "config/smoke.yaml", str(overlay.relative_to(REPO))]
    proc = subprocess.run(cmd, cwd=workflow_copy, env=ssrl_env(), capture_output=True,
                          text=True, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "dino" in out and "This was a dry-run" in out


def test_snakemake_stops_on_an_absurd_batch_size(workflow_copy):
    """1e8 would have run into the OOM killer minutes later; the workflow refuses it at start."""
    proc = dry_run(workflow_copy, extra={"ssrl": {"batch_size": 100000000}})
    assert proc.returncode == 1
    assert "100000000 is greater than the maximum of 65536" in proc.stdout + proc.stderr
    proc = dry_run(workflow_copy, extra={"dino": {"batch_size": 40}})
    assert proc.returncode == 1
    assert ("Invalid config: config key dino.batch_size: a batch of 40 utterances but only 36 "
            "training utterances" in proc.stdout + proc.stderr)


def billion_laughs(path: Path, depth: int = 6) -> Path:
    """A YAML file of aliases of aliases: 9**depth strings once expanded, a few lines on disk."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    lines.append(f"dino: {{note: *a{depth - 1}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_alias_bomb_is_refused_before_it_is_walked(workflow_copy, tmp_path):
    """Snakemake validating such a file spent two minutes printing it (issue 19); the workflow
    and load_config refuse it with one line, whatever the aliases multiply to."""
    from ssrl.config import MAX_CONFIG_VALUES, load_config

    bomb = billion_laughs(workflow_copy / "bomb.yaml")
    message = (f"more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded "
               "(aliases of aliases, a 'billion laughs' file?); refusing to read it")
    with pytest.raises(InputError) as err:
        load_config(REPO / "config.yaml", bomb)
    assert str(err.value) == f"{bomb}: {message}"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1",
           "--configfile", "config/smoke.yaml", "bomb.yaml"]
    proc = subprocess.run(cmd, cwd=workflow_copy, env=ssrl_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"Invalid config: config: {message}" in out
    assert "lol" not in out  # nothing printed the expanded values
def test_the_voxceleb_preset_states_its_own_schedule_and_lr():
    """config/voxceleb.yaml over config.yaml: its momentum is used as written (config.yaml's
    lag does not carry over), DINO's lr follows its batch by the linear scaling rule from the
    paper's 0.25 at 240, the default config's lr is applied as written, and the ablation's
    cluster counts follow K."""
    from ssrl.config import check_config, effective_init_k, load_config
    from ssrl.training.optim import scaled_lr, teacher_momentum

    default = load_config(REPO / "config.yaml")
    assert scaled_lr(default["dino"]) == 0.1  # the default run's numbers do not move
    vox = load_config(REPO / "config.yaml", REPO / "config/voxceleb.yaml")
    check_config(vox)
    for section in ("dino", "ssrl"):
        assert vox[section]["teacher_lag_epochs"] is None
        m = teacher_momentum(vox[section], 2275, 2275 * 10)
        assert (m[0], m[-1]) == (0.999, 0.9999)
    assert scaled_lr(vox["dino"]) == 0.25
    mini = load_config(REPO / "config.yaml", REPO / "config/voxceleb.yaml",
                       REPO / "config/voxceleb-mini.yaml")
    assert scaled_lr(mini["dino"]) == pytest.approx(0.25 * 8 / 240)
    ks = {v["name"]: effective_init_k(v.get("init_k"), vox["cluster"]["k"])
          for v in vox["ablation"]["variants"]}
    assert ks["k6000"] == 6000 and ks["k10000"] == 10000
    assert {v["name"]: effective_init_k(v.get("init_k"), mini["cluster"]["k"])
            for v in mini["ablation"]["variants"]}["k6000"] == 6
    # the overlay changes only model size, epochs, batch, K, device and data paths
    overlay = yaml.safe_load((REPO / "config/voxceleb-mini.yaml").read_text())
    assert set(overlay) == {"experiment", "data", "model", "augment", "runtime", "dino",
                            "cluster", "ssrl", "iterative"}
    assert set(overlay["ssrl"]) == {"epochs", "batch_size"}
    assert set(overlay["dino"]) == {"epochs", "warmup_epochs", "batch_size", "out_dim",
                                    "hidden_dim", "bottleneck_dim"}


def test_snakemake_checks_data_paths_at_start_up(workflow_copy):
    """The VoxCeleb preset without the corpora: one line naming the key and the path, before
    any job runs (not when its preparation job runs)."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1",
           "--configfile", "config/voxceleb.yaml"]
    proc = subprocess.run(cmd, cwd=workflow_copy, env=ssrl_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert ("Invalid config: config key data.voxceleb.train_root: /data/voxceleb2/dev not "
            "found") in proc.stdout + proc.stderr, proc.stdout[-2000:]
