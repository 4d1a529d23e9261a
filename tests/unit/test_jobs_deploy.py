"""fleet jobs: argument handling, the Flink client's arguments, configuration and environment, the
Python archive, and the checks of a job's REST checkpoint config (samples from a Flink 2.2 cluster)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from fleet.cli import build_parser
from fleet.config import Settings
from fleet.infra import flink_jobs as deploy
from fleet.infra.flink_jobs import Cluster, DeployError
from tests.support.require import module

# GET /jobs/<id>/checkpoints/config of the telemetry job on the local stack.
EXACTLY_ONCE_CONFIG = {
    "mode": "exactly_once", "interval": 5000, "timeout": 120000, "min_pause": 1000, "max_concurrent": 1,
    "externalization": {"enabled": True, "delete_on_cancellation": False},
    "state_backend": "EmbeddedRocksDBStateBackend", "checkpoint_storage": "FileSystemCheckpointStorage",
    "unaligned_checkpoints": False, "tolerable_failed_checkpoints": 3,
}
# The same job submitted with only the jars fixed (a bare cluster's defaults).
CHECKPOINTING_OFF_CONFIG = {
    **EXACTLY_ONCE_CONFIG, "mode": "at_least_once", "interval": 9223372036854775807,
    "externalization": {"enabled": False, "delete_on_cancellation": True},
}
# GET /jobs/<id>/checkpoints (trimmed).
CHECKPOINTS = {"counts": {"completed": 74}, "latest": {"completed": {
    "id": 74, "status": "COMPLETED", "latest_ack_timestamp": 1796220259011,
    "external_path": "file:/var/data/flink/checkpoints/a7cc/chk-74"}, "restored": None}}
JOB = {"jid": "a7cc42794b043e020dd7dbf8ab8090a4", "name": "telemetry", "state": "RUNNING"}


# --- arguments ------------------------------------------------------------------------------------

def test_submit_defaults_to_the_telemetry_job_on_the_local_cluster():
    args = build_parser().parse_args(["jobs", "submit"])
    assert (args.job, args.cluster, args.from_savepoint, args.parallelism) == ("telemetry", None, None, None)


def test_submit_takes_savepoint_cluster_and_parallelism():
    args = build_parser().parse_args(["jobs", "submit", "telemetry", "--from-savepoint", "file:/sp/savepoint-1",
                                      "--cluster", "http://jm:8081", "--parallelism", "8"])
    assert (args.from_savepoint, args.cluster, args.parallelism) == ("file:/sp/savepoint-1", "http://jm:8081", 8)
    assert args.job_args == []


@pytest.mark.parametrize("given", [["--job-args", "--lake-part-mb 64 --core java"],
                                   ["--job-args=--lake-part-mb 64 --core java"]])
def test_the_jobs_own_options_pass_through_as_one_quoted_argument(given):
    args = build_parser().parse_args(["jobs", "submit", "telemetry", *given])
    assert args.job_args == ["--lake-part-mb", "64", "--core", "java"]


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_parallelism_must_be_a_positive_integer(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["jobs", "submit", "--parallelism", bad])
    assert exit_.value.code == 2
    assert "--parallelism" in capsys.readouterr().err


def test_stop_takes_a_name_or_an_id_and_a_savepoint_dir():
    args = build_parser().parse_args(["jobs", "stop"])
    assert (args.job, args.savepoint_dir) == ("telemetry", None)
    args = build_parser().parse_args(["jobs", "stop", JOB["jid"], "--savepoint-dir", "s3://b/sp"])
    assert (args.job, args.savepoint_dir) == (JOB["jid"], "s3://b/sp")


def test_list_takes_a_cluster():
    assert build_parser().parse_args(["jobs", "list", "--cluster", "jm:8081"]).cluster == "jm:8081"


@pytest.mark.parametrize("given,url", [
    ("http://jm.example.com:8081", "http://jm.example.com:8081"),
    ("http://jm.example.com:8081/", "http://jm.example.com:8081"),
    ("jm:9000", "http://jm:9000"),
    ("http://jm", "http://jm:8081"),
    ("https://flink.example.com", "https://flink.example.com:443"),
])
def test_cluster_urls(given, url):
    cluster = Cluster.parse(given)
    assert cluster.url == url
    assert Cluster.parse(cluster.url) == cluster


@pytest.mark.parametrize("bad", ["ftp://jm:21", "http://", ""])
def test_a_cluster_must_be_a_rest_url(bad):
    with pytest.raises(DeployError, match="REST URL"):
        Cluster.parse(bad)


def test_the_local_cluster_is_the_settings_rest_port():
    assert Cluster.local(Settings(flink_rest_port=18081).flink_rest_port) == Cluster.parse("127.0.0.1:18081")


def test_unknown_jobs_are_refused_with_the_known_ones():
    assert "telemetry" in deploy.available_jobs()
    assert deploy.job_script("telemetry").relative_to(deploy.PROJECT_ROOT).as_posix() == "jobs/telemetry/job.py"
    with pytest.raises(DeployError, match="telemetry"):
        deploy.job_script("nope")


@pytest.mark.parametrize("given", ["s3://bucket/savepoints", "file:/data/sp", "hdfs://nn:8020/sp"])
def test_savepoint_uris_are_passed_as_given(given):
    assert deploy.savepoint_target(given) == given


def test_a_relative_savepoint_dir_becomes_an_absolute_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert deploy.savepoint_target("sp") == (tmp_path / "sp").as_uri()
    assert deploy.savepoint_target(None) is None


# --- which job to stop --------------------------------------------------------------------------

def test_a_name_resolves_to_its_one_running_job():
    jobs = [{**JOB, "jid": "1" * 32, "state": "FINISHED"}, JOB, {**JOB, "jid": "2" * 32, "name": "other"}]
    assert deploy.resolve_job(jobs, "telemetry") == JOB["jid"]


def test_a_job_id_is_taken_as_is():
    assert deploy.resolve_job([], JOB["jid"]) == JOB["jid"]


def test_no_running_job_of_that_name_says_what_was_seen():
    with pytest.raises(DeployError, match=r"no RUNNING job named 'telemetry'.*FINISHED"):
        deploy.resolve_job([{**JOB, "state": "FINISHED"}], "telemetry")


def test_two_running_jobs_of_one_name_need_the_id():
    with pytest.raises(DeployError, match="give the job id"):
        deploy.resolve_job([JOB, {**JOB, "jid": "3" * 32}], "telemetry")


def test_a_second_copy_of_a_running_job_is_refused():
    with pytest.raises(DeployError, match="already RUNNING.*fleet jobs stop telemetry"):
        deploy.refuse_second_copy([{**JOB, "state": "FINISHED", "jid": "4" * 32}, JOB], "telemetry")
    deploy.refuse_second_copy([{**JOB, "state": "FINISHED"}, {**JOB, "name": "other"}], "telemetry")


# --- checkpoint verification ---------------------------------------------------------------------

def test_exactly_once_checkpointing_passes():
    assert deploy.checkpoint_problems(EXACTLY_ONCE_CONFIG) == []


def test_the_bare_cluster_defaults_are_all_reported():
    found = deploy.checkpoint_problems(CHECKPOINTING_OFF_CONFIG)
    assert len(found) == 3
    assert "checkpointing is off" in found[0]
    assert "at_least_once" in found[1]
    assert "not retained" in found[2]


@pytest.mark.parametrize("interval", [None, 0, -1, 2 ** 63 - 1, "5s"])
def test_checkpointing_off_in_any_form(interval):
    assert any("off" in p for p in deploy.checkpoint_problems({**EXACTLY_ONCE_CONFIG, "interval": interval}))


def test_checkpoints_deleted_on_cancel_are_not_resumable():
    config = {**EXACTLY_ONCE_CONFIG, "externalization": {"enabled": True, "delete_on_cancellation": True}}
    assert deploy.checkpoint_problems(config) and "not retained" in deploy.checkpoint_problems(config)[0]


def test_describe_a_job_with_its_checkpointing_and_last_checkpoint():
    line = deploy.describe(JOB, EXACTLY_ONCE_CONFIG, CHECKPOINTS)
    assert line.startswith(JOB["jid"])
    assert "telemetry" in line and "RUNNING" in line
    assert "exactly_once every 5s" in line
    assert "#74" in line and "chk-74" in line


def test_describe_shouts_when_a_job_is_not_exactly_once():
    line = deploy.describe(JOB, CHECKPOINTING_OFF_CONFIG, {"latest": {"completed": None}})
    assert "NOT exactly-once" in line and "no completed checkpoint yet" in line
    assert "checkpointing: unknown" in deploy.describe(JOB, None, None)


def test_the_job_id_comes_from_the_cli_output():
    out = "Job has been submitted with JobID 30ee68dd77bc66d7f2b68c4f73280b7c\n"
    assert deploy.parse_job_id(out) == "30ee68dd77bc66d7f2b68c4f73280b7c"
    assert deploy.parse_job_id("Traceback ...") is None


# --- the archive ----------------------------------------------------------------------------------

def test_the_archive_holds_the_project_packages_and_nothing_else(tmp_path):
    archive = deploy.build_archive(tmp_path / "out" / "fleet-project.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert {"fleet/__init__.py", "fleet/infra/flink_jobs.py", "fleet/infra/job_config.py", "jobs/__init__.py",
            "jobs/telemetry/__init__.py", "jobs/telemetry/job.py", "jobs/telemetry/pipeline.py"} <= set(names)
    assert all(n.endswith(".py") and "__pycache__" not in n for n in names)
    assert {n.split("/")[0] for n in names} == {"fleet", "jobs"}
    assert not list(archive.parent.glob("*.tmp"))


def test_the_archive_keeps_the_packages_importable(tmp_path):
    """A TaskManager puts the zip itself on sys.path: ``fleet.`` must import from inside it."""
    archive = deploy.build_archive(tmp_path / "fleet-project.zip")
    code = f"import sys; sys.path[:0] = [{str(archive)!r}]; import fleet.infra.job_config as m; print(m.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.strip() == f"{archive}/fleet/infra/job_config.py"


# --- the client: arguments, configuration, environment ----------------------------------------------

def test_run_arguments_target_the_cluster_and_ship_the_archive():
    module("pyflink", "the Flink CLI ships with apache-flink")
    argv = deploy.run_argv(Cluster.parse("http://jm:8082"), Path("/p/jobs/telemetry/job.py"), Path("/a.zip"),
                           savepoint="file:/sp/1", parallelism=4, job_args=["--lake-part-mb", "64"])
    assert argv[0].endswith("/pyflink/bin/flink") and argv[1:4] == ["run", "--target", "remote"]
    assert "-Drest.address=jm" in argv and "-Drest.port=8082" in argv and "--detached" in argv
    assert argv[argv.index("--fromSavepoint") + 1] == "file:/sp/1"
    assert argv[argv.index("--parallelism") + 1] == "4"
    assert argv[-6:] == ["--python", "/p/jobs/telemetry/job.py", "--pyFiles", "/a.zip", "--lake-part-mb", "64"]
    plain = deploy.run_argv(Cluster.parse("jm:8081"), Path("/j.py"), Path("/a.zip"))
    assert "--fromSavepoint" not in plain and "--parallelism" not in plain


def test_the_client_conf_is_the_projects_exactly_once_java17_conf_aimed_at_the_cluster(tmp_path):
    module("pyflink", "the client conf copies PyFlink's log4j files")
    conf = deploy.client_conf(Cluster.parse("http://jm:8081"), "/opt/venv/bin/python")
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert conf["execution.checkpointing.interval"] == "5s"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in conf["env.java.opts.all"]
    assert (conf["rest.address"], conf["rest.port"]) == ("jm", 8081)
    assert conf["python.executable"] == "/opt/venv/bin/python"
    assert conf["python.client.executable"] == sys.executable
    conf_dir = deploy.write_client_conf_dir(tmp_path / "conf", conf)
    assert yaml.safe_load((conf_dir / "config.yaml").read_text()) == conf
    assert (conf_dir / "log4j-cli.properties").exists()


def test_the_client_environment_carries_the_settings_and_flink_dirs(tmp_path):
    settings = Settings(var_dir=tmp_path / "var", cassandra_keyspace="prod_ks")
    env = deploy.client_env(settings.to_env(), tmp_path / "conf", tmp_path / "lib", tmp_path / "log",
                            base={"PATH": "/bin", "FLEET_CASSANDRA_KEYSPACE": "stale", "PYTHONPATH": "/extra"})
    assert env["FLEET_CASSANDRA_KEYSPACE"] == "prod_ks"  # the settings win over a stale environment
    assert env["FLEET_VAR_DIR"] == str(tmp_path / "var")
    assert (env["FLINK_CONF_DIR"], env["FLINK_LIB_DIR"]) == (str(tmp_path / "conf"), str(tmp_path / "lib"))
    assert env["PYFLINK_CLIENT_EXECUTABLE"] == sys.executable
    paths = env["PYTHONPATH"].split(":")
    assert paths[0] == str(deploy.PROJECT_ROOT) and paths[-1] == "/extra"
    assert env["PATH"] == "/bin"


def test_a_relative_lake_path_is_refused_before_submitting():
    assert "not absolute" in deploy.lake_path_problem({"FLEET_LAKE_DIR": "var/lake"})
    assert "not absolute" in deploy.lake_path_problem({})
    assert deploy.lake_path_problem({"FLEET_VAR_DIR": "/srv/fleet"}) is None
    assert deploy.lake_path_problem(Settings(var_dir=Path("/srv/fleet")).to_env()) is None


def test_missing_connector_jars_say_how_to_get_them(tmp_path):
    with pytest.raises(DeployError, match="fleet stack up flink"):
        deploy.find_lib_dir(tmp_path / "lib", environ={})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "flink-dist.jar").write_bytes(b"")
    assert deploy.find_lib_dir(tmp_path / "lib", environ={"FLINK_LIB_DIR": str(tmp_path / "mine")}) \
        == tmp_path / "mine"
