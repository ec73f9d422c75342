"""load_config: extends chains, --set overrides parsed as YAML, strict key and type checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs.config import Config, load_config, parse_override
from amazon_recs.errors import ConfigError
from amazon_recs.spark import spark_conf

CONF = Path(__file__).resolve().parents[2] / "conf"
BASE = CONF / "base.yaml"
LOCAL = CONF / "local.yaml"
LOCAL_PACKAGES = ["io.delta:delta-spark_2.12:3.3.2", "org.apache.hadoop:hadoop-aws:3.3.4"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def local() -> Config:
    return load_config(LOCAL)


@pytest.fixture
def flag_base(tmp_path: Path) -> Path:
    """A tiny base with one key of each type (conf/base.yaml has no boolean setting)."""
    return write(
        tmp_path / "base.yaml",
        "job:\n  dry_run: false\n  retries: 3\n  ratio: 0.5\n  name: nightly\n  tags: [a]\n",
    )


# --- extends ----------------------------------------------------------------


def test_local_overrides_base_and_keeps_the_rest(local):
    # From local.yaml.
    assert local.get("spark.master") == "local[2]"
    assert local.get("spark.driver_memory") == "4g"
    assert local.get("spark.driver_host") == "127.0.0.1"
    assert local.get("spark.ivy_dir") == ".cache/ivy"
    # From base.yaml, untouched by local.yaml.
    assert local.get("als.rank") == 32
    assert local.get("spark.app_name") == "amazon-recs"
    assert local.get("spark.packages") == LOCAL_PACKAGES
    assert local.get("recommend.hybrid_weights") == {
        "als": 0.4,
        "content": 0.2,
        "item_knn": 0.3,
        "popular": 0.1,
    }
    # The chain marker is not a setting.
    assert "extends" not in local
    assert local.source == str(LOCAL)


def test_two_level_chain_applies_the_nearest_file_last():
    cfg = load_config(CONF / "test.yaml")
    assert cfg.get("spark.shuffle_partitions") == 2  # test.yaml over local.yaml's 8
    assert cfg.get("spark.master") == "local[2]"  # local.yaml over base.yaml
    assert cfg.get("als.rank") == 16
    assert cfg.get("als.reg_param") == 0.1  # base.yaml


def test_local_matches_base_apart_from_what_local_sets(local):
    base = load_config(BASE).to_dict()
    merged = local.to_dict()
    spark_base, spark_local = base.pop("spark"), merged.pop("spark")
    assert merged == base
    changed = {k for k in spark_base if spark_base[k] != spark_local[k]}
    assert changed == {"master", "driver_memory", "driver_host", "ivy_dir", "log_dir", "packages"}


def test_extends_is_relative_to_the_extending_file(tmp_path):
    sub = tmp_path / "envs"
    sub.mkdir()
    write(tmp_path / "root.yaml", "a:\n  x: 1\n  y: two\n")
    env = write(sub / "dev.yaml", "extends: ../root.yaml\na:\n  x: 5\n")
    cfg = load_config(env)
    assert cfg.to_dict() == {"a": {"x": 5, "y": "two"}}


# --- --set overrides ----------------------------------------------------------


def test_int_override(local):
    cfg = local.with_overrides(["als.rank=8"])
    assert cfg.get("als.rank") == 8
    assert type(cfg.get("als.rank")) is int


def test_int_given_for_a_float_becomes_float():
    cfg = load_config(LOCAL, ["als.reg_param=1", "content.min_similarity=0.25"])
    assert cfg.get("als.reg_param") == 1.0
    assert type(cfg.get("als.reg_param")) is float
    assert cfg.get("content.min_similarity") == 0.25


def test_list_override():
    cfg = load_config(LOCAL, ["spark.packages=[a:b:1, c:d:2]"])
    assert cfg.get("spark.packages") == ["a:b:1", "c:d:2"]
    assert load_config(LOCAL, ["spark.packages=[]"]).get("spark.packages") == []


def test_string_overrides_keep_spaces_equals_and_empty_value():
    cfg = load_config(LOCAL, ["spark.app_name=my app", "input.reviews=s3://b/k=v/*.gz", "spark.driver_host="])
    assert cfg.get("spark.app_name") == "my app"
    assert cfg.get("input.reviews") == "s3://b/k=v/*.gz"  # only the first '=' splits
    assert cfg.get("spark.driver_host") == ""


def test_bool_override(flag_base):
    cfg = load_config(flag_base, ["job.dry_run=true"])
    assert cfg.get("job.dry_run") is True
    assert load_config(flag_base, ["job.dry_run=no"]).get("job.dry_run") is False  # YAML 1.1


def test_section_override_as_a_mapping():
    cfg = load_config(LOCAL, ["recommend.hybrid_weights={als: 1, content: 0}"])
    assert cfg.get("recommend.hybrid_weights") == {
        "als": 1.0,
        "content": 0.0,
        "item_knn": 0.3,
        "popular": 0.1,
    }
    assert type(cfg.get("recommend.hybrid_weights.als")) is float


def test_later_override_wins_and_original_is_unchanged(local):
    cfg = local.with_overrides(["als.rank=8", "als.rank=12"])
    assert cfg.get("als.rank") == 12
    assert local.get("als.rank") == 32


def test_override_key_and_value_are_stripped():
    assert parse_override(" als.rank = 8") == ("als.rank", 8)


def test_config_hands_out_copies(local):
    packages = local.get("spark.packages")
    packages.append("evil")
    local.to_dict()["als"]["rank"] = 1
    assert local.get("spark.packages") == LOCAL_PACKAGES
    assert local.get("als.rank") == 32


def test_require_names_a_missing_setting(local):
    assert local.require("als.rank") == 32
    with pytest.raises(ConfigError, match=r"'als\.nope' is missing"):
        local.require("als.nope")


# --- refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    "item, key", [("als.rnak=3", "als.rnak"), ("nope.x=1", "nope.x"), ("als.rank.x=1", "als.rank.x")]
)
def test_unknown_override_key_is_refused_naming_it(item, key):
    with pytest.raises(ConfigError) as err:
        load_config(LOCAL, [item])
    assert f"unknown setting '{key}'" in str(err.value)
    assert "--set" in str(err.value)


def test_unknown_key_message_lists_the_known_keys_of_its_section():
    with pytest.raises(ConfigError, match=r"known under 'als': .*\brank\b"):
        load_config(LOCAL, ["als.rnak=3"])


def test_unknown_key_inside_a_mapping_override_is_refused():
    with pytest.raises(ConfigError, match=r"unknown setting 'recommend\.hybrid_weights\.foo'"):
        load_config(LOCAL, ["recommend.hybrid_weights={foo: 1}"])


@pytest.mark.parametrize(
    "item, key, expected, got",
    [
        ("als.rank=abc", "als.rank", "int", "str"),
        ("als.rank=true", "als.rank", "int", "bool"),
        ("als.rank=1.5", "als.rank", "int", "float"),
        ("als.reg_param=false", "als.reg_param", "float", "bool"),
        ("als.reg_param=high", "als.reg_param", "float", "str"),
        ("spark.packages=io.delta:x:1", "spark.packages", "list", "str"),
        ("spark.app_name=[a]", "spark.app_name", "str", "list"),
        ("als=3", "als", "dict", "int"),
    ],
)
def test_wrong_type_is_refused_naming_the_key(item, key, expected, got):
    with pytest.raises(ConfigError) as err:
        load_config(LOCAL, [item])
    message = str(err.value)
    assert f"setting '{key}'" in message
    assert f"must be {expected}, got {got}" in message


def test_int_is_refused_for_a_bool(flag_base):
    with pytest.raises(ConfigError, match=r"'job\.dry_run' in --set must be bool, got int"):
        load_config(flag_base, ["job.dry_run=1"])


@pytest.mark.parametrize("item", ["als.rank", "als.rank 8", "=8", "  =8"])
def test_override_without_key_or_equals_is_refused(item):
    with pytest.raises(ConfigError, match="is not of the form section.key=value"):
        load_config(LOCAL, [item])


def test_override_with_invalid_yaml_value_is_refused():
    with pytest.raises(ConfigError, match=r"override 'spark.packages=\[a,': value is not valid YAML"):
        load_config(LOCAL, ["spark.packages=[a,"])


def test_missing_file_is_refused(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file {missing} does not exist")):
        load_config(missing)


def test_missing_extended_file_is_refused(tmp_path):
    env = write(tmp_path / "env.yaml", "extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml does not exist"):
        load_config(env)


def test_extends_cycle_is_refused(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nx: 2\n")
    with pytest.raises(ConfigError, match=r"'extends' makes a cycle at .*a\.yaml"):
        load_config(a)


def test_file_extending_itself_is_refused(tmp_path):
    me = write(tmp_path / "me.yaml", "extends: ./me.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(me)


def test_unknown_key_in_an_environment_file_is_refused_naming_key_and_file(tmp_path):
    env = write(tmp_path / "env.yaml", f"extends: {BASE}\nals:\n  rank: 4\n  rnak: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(env)
    assert "unknown setting 'als.rnak'" in str(err.value)
    assert str(env) in str(err.value)


def test_unknown_section_in_an_environment_file_is_refused(tmp_path):
    env = write(tmp_path / "env.yaml", f"extends: {BASE}\nmodels:\n  rank: 4\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'models\.rank'.*known under 'top level'"):
        load_config(env)


def test_wrong_type_in_an_environment_file_is_refused(tmp_path):
    env = write(tmp_path / "env.yaml", f"extends: {BASE}\nsplit:\n  test_fraction: lots\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"'split.test_fraction' in {env} must be float, got str")
    ):
        load_config(env)


def test_environment_file_values_are_coerced_like_overrides(tmp_path):
    env = write(tmp_path / "env.yaml", f"extends: {BASE}\nals:\n  alpha: 2\n")
    cfg = load_config(env)
    assert cfg.get("als.alpha") == 2.0
    assert type(cfg.get("als.alpha")) is float


@pytest.mark.parametrize(
    "text, problem", [("- a\n- b\n", "must hold a mapping"), ("a: [1,\n", "not valid YAML")]
)
def test_malformed_file_is_refused(tmp_path, text, problem):
    bad = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=problem):
        load_config(bad)


def test_empty_environment_file_is_its_base(tmp_path):
    env = write(tmp_path / "env.yaml", f"extends: {BASE}\n")
    assert load_config(env).to_dict() == load_config(BASE).to_dict()


def test_s3a_settings_only_when_asked_and_never_credentials(local):
    assert not any("s3a" in key for key in spark_conf(local))
    aws = load_config(CONF / "local-aws.yaml")
    conf = spark_conf(aws)
    assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == aws.require("aws.s3_endpoint")
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert not any("key" in k.lower() or "secret" in k.lower() for k in conf)
    assert aws.require("paths.warehouse") == f"s3://{aws.require('aws.bucket')}/warehouse"


def test_the_spark_ui_is_off_locally_and_on_for_emr(local):
    assert spark_conf(local)["spark.ui.enabled"] == "false"
    assert spark_conf(load_config(CONF / "emr.yaml"))["spark.ui.enabled"] == "true"
    assert spark_conf(local.with_overrides(["spark.ui=true"]))["spark.ui.enabled"] == "true"


def test_the_suites_broadcast_joins_hold_small_pages(spark, local):
    # Each broadcast hash join keeps a whole memory page in the driver's storage until the
    # JVM collects it: at Spark's default for a 2g driver (32 MiB), the suite's pipelines
    # filled the storage memory and a task was refused execution memory.
    assert "spark.buffer.pageSize" not in spark_conf(local)
    assert spark.sparkContext.getConf().get("spark.buffer.pageSize") == "2m"
    memory = spark.sparkContext._jvm.org.apache.spark.SparkEnv.get().memoryManager()
    before = memory.storageMemoryUsed()
    rows = spark.range(1000).select(F.concat(F.lit("k"), (F.col("id") % 10).cast("string")).alias("key"))
    keys = spark.createDataFrame([(f"k{i}", i) for i in range(10)], "key string, n int")
    assert rows.join(F.broadcast(keys), "key").count() == 1000
    assert memory.storageMemoryUsed() - before < 8 * 2**20
