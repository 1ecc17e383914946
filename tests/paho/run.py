"""Runs the Eclipse Paho interoperability client tests (vendored beside this file,
unmodified; see README.md) against an MQTT broker, each test in a process of its own, and
prints one JSON object: {"passed": [...], "failed": [...]}.

    python3 tests/paho/run.py --port 1883 --suite 3   # client_test.py, MQTT 3.1.1
    python3 tests/paho/run.py --port 1883 --suite 5   # client_test5.py, MQTT 5.0

This runner is weir's; the suites' own `__main__` blocks set module globals (host, port,
topics) from the command line, which this runner sets instead.
"""

import argparse
import json
import os
import subprocess
import sys
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--suite", choices=["3", "5"], required=True)
    p.add_argument("--only", help="run this test alone, in this process")
    p.add_argument("--timeout", type=int, default=90, help="seconds per test")
    p.add_argument("--retries", type=int, default=0,
                   help="run a failed test again up to this many times; listed in 'retried'")
    a = p.parse_args()
    if a.only:
        run_one(a.suite, a.host, a.port, a.only)
    passed, failed, retried = [], [], []
    for name in names(a.suite):
        cmd = [sys.executable, __file__, "--host", a.host, "--port", str(a.port),
               "--suite", a.suite, "--only", name]
        for attempt in range(a.retries + 1):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                ok = out.returncode == 0
                log = out.stdout + out.stderr
            except subprocess.TimeoutExpired as e:
                ok, log = False, f"timed out after {a.timeout}s\n{e.stdout or ''}{e.stderr or ''}"
            if not ok and os.environ.get("PAHO_VERBOSE"):
                print(f"--- {name} (attempt {attempt + 1})\n{log}", file=sys.stderr)
            if ok:
                break
        if ok and attempt > 0:
            retried.append(name)
        (passed if ok else failed).append(name)
    print(json.dumps({"passed": passed, "failed": failed, "retried": retried}))


if __name__ == "__main__":
    main()
