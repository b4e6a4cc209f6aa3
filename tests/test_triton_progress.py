"""The stall probe: Triton's core counts as stuck only when requests stay pending and none completes for the limit;
idle, progressing or unreadable is never stuck."""

from __future__ import annotations

import http.server
import threading

from server.triton_progress import Progress, counts

METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{{model="fast",version="1"}} {done}
nv_inference_request_failure{{model="fast",reason="OTHER",version="1"}} 2
nv_inference_request_success{{model="vgg_d",version="1"}} 7
nv_inference_pending_request_count{{model="fast",version="1"}} {pending}
nv_inference_pending_request_count{{model="vgg_d",version="1"}} 0
"""


def test_counts_sum_every_model_and_outcome():
    assert counts(METRICS.format(done=5, pending=3)) == (5 + 2 + 7, 3)


def test_pending_requests_without_completions_are_a_stall_idle_and_progress_are_not():
    state = {"done": 5, "pending": 0}

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.format(**state).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        now = [0.0]
        probe = Progress(f"127.0.0.1:{server.server_address[1]}", stall_after_s=60, clock=lambda: now[0])
        assert probe()
        now[0] += 100
        assert probe()  # idle for longer than the limit: nothing pending, nothing to complete
        state["pending"] = 2
        now[0] += 30
        assert probe()  # pending, nothing completed, but for less than the limit
        now[0] += 31
        assert not probe()  # pending, and nothing completed for 61 s: stalled
        state["done"] = 6
        assert probe()  # one completed: progress again
    finally:
        server.shutdown()
    assert Progress("127.0.0.1:1", stall_after_s=0.0)()  # unreadable metrics: the health probe's judgement
