"""The supervisor's rules on a stand-in service: restart after an exit, back off on repeated crashes, give up on a
crash loop at start with the last error, and stop waiting when a stop is requested."""

from __future__ import annotations

import pytest

from server.supervisor import GaveUp, Supervised, one_line


class Service:
    """Runs until ``crash()``; each start takes the next outcome (an exception to raise, or None: it serves)."""

    def __init__(self, starts: list[Exception | None]) -> None:
        self.starts, self.running, self.cleanups = list(starts), True, 0

    def start(self) -> None:
        outcome = self.starts.pop(0)
        if outcome is not None:
            raise outcome
        self.running = True

    def exit_status(self) -> int | None:
        return None if self.running else -9

    def cleanup(self) -> None:
        self.cleanups += 1


def supervised(service: Service, lines: list[str], **options) -> Supervised:
    return Supervised("svc", service.start, service.exit_status, service.cleanup, report=lines.append,
                      backoff_s=(0.0, 0.01, 0.02), **options)


def test_an_exited_service_is_restarted_once_and_logged():
    service, lines = Service([None]), []
    watcher = supervised(service, lines)
    watcher.check()
    assert lines == []  # running: nothing to do
    service.running = False
    watcher.check()
    assert service.running and watcher.restarts == 1 and service.cleanups == 1
    assert lines[0] == "serve: svc exited unexpectedly (status -9)"
    assert lines[1] == "serve: restarting svc in 0 s (restart 1)"
    assert lines[2].startswith("serve: svc is back after a restart")


def test_a_crash_loop_at_start_is_given_up_with_its_cause_on_one_line():
    service, lines = Service([RuntimeError("exited before ready:\nmodel 'm': bad file"), RuntimeError("x"),
                              RuntimeError("tritonserver exited before it was ready:\nvgg_a: not an onnx model")]), []
    watcher = supervised(service, lines)
    service.running = False
    with pytest.raises(GaveUp) as gave_up:
        watcher.check()
    assert str(gave_up.value) == ("svc failed to start 3 times in a row; giving up: tritonserver exited before it "
                                  "was ready; vgg_a: not an onnx model")
    assert lines.count("serve: svc did not start (x)") == 1 and service.cleanups == 4
    assert [line for line in lines if "restarting" in line] == [
        "serve: restarting svc in 0 s (restart 1)", "serve: restarting svc in 0.01 s (restart 1)",
        "serve: restarting svc in 0.02 s (restart 1)"]


def test_backoff_grows_with_crashes_and_resets_after_a_stable_run():
    service, lines = Service([None, None, None]), []
    watcher = supervised(service, lines, stable_s=0.0)
    service.running = False
    watcher.check()
    watcher.stable_s = 3600.0
    service.running = False
    watcher.check()
    assert "serve: restarting svc in 0.01 s (restart 2)" in lines  # second crash in a row: longer pause
    watcher.stable_s = 0.0
    watcher.check()  # running long enough: the crash count starts again
    service.running = False
    watcher.check()
    assert lines[-2] == "serve: restarting svc in 0 s (restart 3)"


def test_a_stop_request_ends_the_wait_without_a_restart():
    service, lines = Service([None]), []
    watcher = Supervised("svc", service.start, service.exit_status, service.cleanup, report=lines.append,
                         stop_requested=lambda: True, backoff_s=(30.0,))
    service.running = False
    watcher.check()
    assert not service.running and watcher.restarts == 0


def test_one_line_joins_and_shortens():
    assert one_line(RuntimeError("a:\n  b\n\nc")) == "a; b; c"
    assert one_line(RuntimeError("")) == "RuntimeError"
    assert len(one_line(RuntimeError("x" * 1000))) == 400


class Silence:
    """A stand-in for Liveness: silent for as long as the test says."""

    def __init__(self) -> None:
        self.seconds, self.restarts = 0.0, 0

    def silent_s(self) -> float:
        return self.seconds

    def restart(self) -> None:
        self.seconds, self.restarts = 0.0, self.restarts + 1


def test_a_service_silent_past_the_limit_is_killed_and_restarted():
    service, lines, silence, kills = Service([None]), [], Silence(), []

    def kill() -> None:
        kills.append(1)
        service.running = False

    watcher = supervised(service, lines, liveness=silence, hang_after_s=20, kill=kill)
    silence.seconds = 19.9
    watcher.check()
    assert lines == [] and kills == []  # slow to answer is not hung
    silence.seconds = 20.5
    watcher.check()
    assert kills == [1] and service.cleanups == 1 and service.running and watcher.restarts == 1
    assert lines[:2] == ["serve: svc has not answered its liveness probe for 20 s; killing it",
                         "serve: svc hung (killed after 20 s without an answer)"]
    assert silence.restarts == 1 and silence.silent_s() == 0.0  # the new process's silence counts from its start


def test_the_liveness_probe_records_answers_in_the_background():
    import time

    from server.supervisor import Liveness

    answers = []
    liveness = Liveness(lambda: answers.append(1) or len(answers) < 5, interval_s=0.01)  # answers 4 times, then not
    try:
        deadline = time.monotonic() + 30
        while len(answers) < 10:  # the probe runs on its own, and stays asked while silent
            assert time.monotonic() < deadline
            time.sleep(0.01)
        silent = liveness.silent_s()
        time.sleep(0.05)
        assert liveness.silent_s() >= silent + 0.05  # no answer since the 4th
        liveness.restart()
        assert liveness.silent_s() < silent + 0.05
    finally:
        liveness.stop()
