"""The loader's waits and what it says of them, as a real process: a clean stop."""

import json
import signal
import subprocess
import threading

from .conftest import Stage, daily, files_in, loader_cmd, make_config, wait_for, write_config


def _snapshot(config):
    try:
        return json.loads((config.run_dir / "loader.json").read_text())
    except (OSError, ValueError):
        return {}


class Sealer:
    """Seals a stock_daily file every ``every`` seconds from a thread, as a busy stager would."""

    def __init__(self, stage, every):
        self.stage, self.every = stage, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-sealer")
        self.count = 0

    def _run(self):
        while not self.stopped.wait(self.every):
            self.count += 1
            self.stage("stock_daily", [daily(f"{self.count:06d}.SZ", 2, float(self.count))])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(10)


def test_a_clean_stop_logs_no_error_while_files_are_moving(tmp_path):
    path = write_config(tmp_path)
    config = make_config(tmp_path)
    stage = Stage(config)
    for run in range(3):  # the watcher's stop raced events in most runs: three catch it
        err_path = tmp_path / f"loader-{run}.err"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(loader_cmd(path, "run"), stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert wait_for(lambda: _snapshot(config).get("pid") == proc.pid, 20), err_path.read_text()
            archived = len(files_in(config.archive_dir))
            with Sealer(stage, every=0.02):  # sealed and archived all through the stop
                assert wait_for(lambda: len(files_in(config.archive_dir)) > archived + 3, 20)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log = err_path.read_text()
        assert "loader stopped" in log
        assert not [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line], log
