import pytest

from fleet.infra.job_config import REQUIRED_DEFAULTS, JobConfigError, check, missing_defaults, problems

GOOD = dict(interval_ms=5000, mode="EXACTLY_ONCE", retention="RETAIN_ON_CANCELLATION", lake_path="/data/lake")


def test_a_good_config_passes():
    assert problems(**GOOD) == []
    check(**GOOD)


@pytest.mark.parametrize("interval", [None, 0, -1, 2 ** 63 - 1])
def test_checkpointing_off_is_refused(interval):
    with pytest.raises(JobConfigError, match="checkpointing is off"):
        check(**{**GOOD, "interval_ms": interval})


def test_at_least_once_is_refused():
    with pytest.raises(JobConfigError, match="not EXACTLY_ONCE"):
        check(**{**GOOD, "mode": "AT_LEAST_ONCE"})


@pytest.mark.parametrize("retention", [None, "NO_EXTERNALIZED_CHECKPOINTS", "DELETE_ON_CANCELLATION"])
def test_unretained_checkpoints_are_refused(retention):
    with pytest.raises(JobConfigError, match="not retained"):
        check(**{**GOOD, "retention": retention})


@pytest.mark.parametrize("lake", [None, "", "var/lake", "./lake"])
def test_relative_or_unset_lake_is_refused(lake):
    with pytest.raises(JobConfigError, match="not absolute"):
        check(**{**GOOD, "lake_path": lake})


def test_lake_path_is_irrelevant_without_the_lake():
    assert problems(**{**GOOD, "lake_path": "var/lake"}, lake_enabled=False) == []


def test_every_problem_is_reported_at_once():
    assert len(problems(None, "AT_LEAST_ONCE", None, "lake")) == 4


def test_missing_defaults_fills_only_unset_keys():
    conf = {"execution.checkpointing.interval": "30s"}
    missing = missing_defaults(conf)
    assert "execution.checkpointing.interval" not in missing
    assert missing["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert missing_defaults(REQUIRED_DEFAULTS) == {}


def test_the_lake_path_is_taken_as_given_not_as_resolved():
    from fleet.infra.job_config import configured_lake_path
    assert configured_lake_path({}) is None
    assert configured_lake_path({"FLEET_VAR_DIR": "/srv/var"}) == "/srv/var/lake"
    assert configured_lake_path({"FLEET_VAR_DIR": "/srv/var", "FLEET_LAKE_DIR": "lake"}) == "lake"
    with pytest.raises(JobConfigError, match="not absolute"):
        check(**{**GOOD, "lake_path": configured_lake_path({"FLEET_LAKE_DIR": "lake"})})


def test_the_lake_path_may_come_from_the_config_file(tmp_path):
    from fleet.infra.job_config import configured_lake_path

    toml = tmp_path / "fleet.toml"
    toml.write_text('lake_dir = "/data/lake"\n')
    assert configured_lake_path({"FLEET_CONFIG_FILE": str(toml)}) == "/data/lake"
    assert configured_lake_path({"FLEET_CONFIG_FILE": str(toml), "FLEET_LAKE_DIR": "/env/lake"}) == "/env/lake"
    toml.write_text('var_dir = "/srv/fleet"\n')
    assert configured_lake_path({"FLEET_CONFIG_FILE": str(toml)}) == "/srv/fleet/lake"
