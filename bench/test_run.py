"""Unit tests of the benchmark harness's own logic (no proxy, no load):
python3 -m unittest discover -s bench -p 'test_*.py'"""

import tempfile
import unittest
from pathlib import Path

import run


def rotator(log):
    """A Rotator whose write log is `log`: (monotonic time, token) pairs."""
    d = tempfile.mkdtemp()
    r = run.Rotator(Path(d) / "token")
    r.log = list(log)
    return r


class ExpectedTokens(unittest.TestCase):
    LOG = [(0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "d"), (3.9, "e")]

    def test_every_token_current_for_the_settle_time_of_the_load(self):
        got = rotator(self.LOG).expected(0.5, 4.0)
        self.assertEqual(got, {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0})

    def test_not_one_replaced_before_the_load_could_send_it(self):
        # `a` was current for 0.1 s of the load only.
        got = rotator(self.LOG).expected(0.9, 4.0)
        self.assertNotIn("a", got)
        self.assertIn("b", got)

    def test_not_one_written_in_the_last_instant(self):
        got = rotator(self.LOG).expected(0.5, 4.0)
        self.assertNotIn("e", got)
        self.assertIn("e", rotator(self.LOG).expected(0.5, 4.2))

    def test_the_one_current_throughout_a_short_load(self):
        got = rotator(self.LOG).expected(1.2, 1.8)
        self.assertEqual(got, {"b": 1.0})


def variant(sidecar, other):
    rounds = lambda rps: [dict(rps=x) for x in rps]
    summary = lambda rps: dict(rps=sorted(rps)[len(rps) // 2], p99_ms=1.0, cpu_us_per_req=10.0)
    return dict(proxies={
        run.SIDECAR: dict(rounds=rounds(sidecar), summary=summary(sidecar)),
        run.HAPROXY: dict(rounds=rounds(other), summary=summary(other)),
    })


class PerRoundRatios(unittest.TestCase):
    def test_rounds_are_paired_by_index(self):
        r = run.ratios(variant([110, 90, 100], [100, 100, 50]))
        self.assertEqual(r[f"sidecar/{run.HAPROXY}"]["rps_rounds"], [1.1, 0.9, 2.0])

    def test_the_range_and_the_rounds_ahead(self):
        r = run.ratios(variant([110, 90, 100], [100, 100, 50]))[f"sidecar/{run.HAPROXY}"]
        self.assertEqual(run.per_round(r, "x"), "per round x0.90-2.00, ahead in 2 of 3")

    def test_a_level_round_is_not_ahead(self):
        r = run.ratios(variant([100], [100]))[f"sidecar/{run.HAPROXY}"]
        self.assertEqual(run.per_round(r, "x"), "per round x1.00-1.00, ahead in 0 of 1")

    def test_no_rounds(self):
        self.assertEqual(run.per_round({"rps": 1.0}, "x"), "no paired rounds")


if __name__ == "__main__":
    unittest.main()
