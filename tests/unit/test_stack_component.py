"""The base the local stack's single-process components share (devtools/stack/component.py)."""

import socket
import sys

import pytest

from devtools.stack.component import ProcessComponent
from devtools.stack.process import StackError
from fleet.config import Settings


class Sleeper(ProcessComponent):
    name = "sleeper"
    start_timeout = 5.0
    stop_timeout = 5.0

    def __init__(self, settings, port):
        super().__init__(settings, [sys.executable, "-c", "import time; time.sleep(60)"])
        self.port = port

    def ports(self):
        return [("127.0.0.1", self.port, "the sleeper")]

    def healthy(self):
        return self.is_running()

    def endpoints(self):
        return {}


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"FLEET_VAR_DIR": str(tmp_path)})


def test_files_are_named_after_the_component(settings):
    c = Sleeper(settings, 1)
    assert c.process.log_file == c.log_file == settings.log_dir / "sleeper.log"
    assert c.process.pid_file == settings.run_dir / "sleeper.pid"
    assert c.log_files() == [c.log_file]


def test_start_refuses_a_taken_port_and_starts_nothing(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        c = Sleeper(settings, taken.getsockname()[1])
        with pytest.raises(StackError, match="needed by the sleeper"):
            c.start()
        assert not c.is_running()


def test_start_stop(settings):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    c = Sleeper(settings, port)
    try:
        c.start()
        assert c.is_running() and c.healthy()
        c.start()  # idempotent: the same process
        c.stop()
        assert not c.is_running()
    finally:
        c.process.stop(timeout=1)
