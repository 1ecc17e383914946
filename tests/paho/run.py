"""Runs the Eclipse Paho interoperability client tests (vendored beside this file,
unmodified; see README.md) against an MQTT broker, each test in a process of its own, and
prints one JSON object: {"passed": [...], "failed": [...]}.

    python3 tests/paho/run.py --port 1883 --suite 3   # client_test.py, MQTT 3.1.1
    python3 tests/paho/run.py --port 1883 --suite 5   # client_test5.py, MQTT 5.0
    python3 tests/paho/run.py --port 1883,1884 --suite 5   # two brokers, tests side by side

With several ports (brokers of the same configuration), the tests run side by side, one
at a time per broker: most of a test's time is its own sleeps, and tests share client ids
and topics, so two must not run on one broker at once.

This runner is weir's; the suites' own `__main__` blocks set module globals (host, port,
topics) from the command line, which this runner sets instead.
"""

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

# The tests that wait longest (for keep-alives, expiries, will delays), started first so
# that side by side the run is as short as its longest test allows.
SLOW = ("test_subscribe_options", "test_session_expiry", "test_keepalive", "test_will_delay")

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")


def load(suite, host, port):
    sys.path.insert(0, HERE)
    # The package imports its Python test broker, which is not vendored: the clients
    # need none of it.
    sys.modules["mqtt.brokers"] = types.ModuleType("mqtt.brokers")
    if suite == "3":
        import client_test as m

        m.topics = TOPICS
        m.wildtopics = WILDTOPICS
    else:
        import client_test5 as m

        m.topic_prefix = "client_test5/"
        m.topics = [m.topic_prefix + t for t in TOPICS]
        m.wildtopics = [m.topic_prefix + t for t in WILDTOPICS]
        m.setData = lambda: None
    m.nosubscribe_topics = ("test/nosubscribe",)
    m.host = host
    m.port = port
    return m


def names(suite):
    m = load(suite, "127.0.0.1", 0)
    return unittest.TestLoader().getTestCaseNames(m.Test)


def run_one(suite, host, port, name):
    """In this process: one test; exit status 0 when it passed."""
    m = load(suite, host, port)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(unittest.TestSuite([m.Test(name)]))
    sys.exit(0 if result.wasSuccessful() else 1)


def run_test(a, port, name):
    """One test in a process of its own, tried again up to `a.retries` times: whether it
    passed, and whether it took more than one try."""
    cmd = [sys.executable, __file__, "--host", a.host, "--port", str(port),
           "--suite", a.suite, "--only", name]
    for attempt in range(a.retries + 1):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            ok = out.returncode == 0
            log = out.stdout + out.stderr
        except subprocess.TimeoutExpired as e:
            ok, log = False, f"timed out after {a.timeout}s\n{e.stdout or ''}{e.stderr or ''}"
        if not ok and os.environ.get("PAHO_VERBOSE"):
            print(f"--- {name} on port {port} (attempt {attempt + 1})\n{log}", file=sys.stderr)
        if ok:
            return True, attempt > 0
    return False, False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", required=True, help="a port, or several separated by commas")
    p.add_argument("--suite", choices=["3", "5"], required=True)
    p.add_argument("--only", help="run this test alone, in this process")
    p.add_argument("--timeout", type=int, default=90, help="seconds per test")
    p.add_argument("--retries", type=int, default=0,
                   help="run a failed test again up to this many times; listed in 'retried'")
    a = p.parse_args()
    ports = [int(p) for p in a.port.split(",")]
    if a.only:
        run_one(a.suite, a.host, ports[0], a.only)
    todo = queue.Queue()
    for name in sorted(names(a.suite), key=lambda n: n not in SLOW):
        todo.put(name)
    passed, failed, retried = [], [], []
    lock = threading.Lock()

    def worker(port):
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                return
            ok, again = run_test(a, port, name)
            with lock:
                if ok and again:
                    retried.append(name)
                (passed if ok else failed).append(name)

    threads = [threading.Thread(target=worker, args=(port,)) for port in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"passed": passed, "failed": failed, "retried": retried}))


if __name__ == "__main__":
    main()
