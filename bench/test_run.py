"""Unit tests of the benchmark harness's own logic (no proxy, no load):
python3 -m unittest discover -s bench -p 'test_*.py'"""

import os
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
        self.assertEqual(run.per_round(r, "x"), "per round x0.90-2.00, ahead in 2 of 3; "
                                                "mean x1.26, 95% CI x0.45-3.52: level")

    def test_a_level_round_is_not_ahead(self):
        r = run.ratios(variant([100], [100]))[f"sidecar/{run.HAPROXY}"]
        self.assertEqual(run.per_round(r, "x"), "per round x1.00-1.00, ahead in 0 of 1")

    def test_no_rounds(self):
        self.assertEqual(run.per_round({"rps": 1.0}, "x"), "no paired rounds")

    def test_a_baseline_build_is_judged_like_the_other_proxies(self):
        v = variant([100, 101, 99, 100], [100, 100, 100, 100])
        v["proxies"][run.BASELINE] = v["proxies"].pop(run.HAPROXY)
        r = run.ratios(v)
        self.assertEqual(list(r), [f"sidecar/{run.BASELINE}"])
        self.assertEqual(r[f"sidecar/{run.BASELINE}"]["rps_paired"]["verdict"], "level")
        self.assertEqual(run.verdicts({"get": dict(ratios=r)})[0].split()[:4],
                         ["get", "level", "with", run.BASELINE])


def full_round(rps):
    return dict(rps=rps, p50_ms=1.0, p99_ms=2.0, p999_ms=3.0, cpu_us_per_req=10.0,
                user_us_per_req=4.0, sys_us_per_req=6.0, peak_rss_mib=10.0, requests=100,
                errors=0)


def measured(first, second):
    """A variant with token-sidecar's rounds `first` and the baseline's `second`."""
    return dict(proxies={
        kind: dict(rounds=[full_round(x) for x in r], summary=run.summarize([full_round(x) for x in r]),
                   discarded_rounds=[])
        for kind, r in ((run.SIDECAR, first), (run.BASELINE, second))
    })


class SwappedSlots(unittest.TestCase):
    def test_a_slots_advantage_cancels(self):
        # The second slot runs 10 % faster whatever it holds; the builds are equal.
        res = measured([100, 100], [110, 110])
        swapped = measured([100, 100], [110, 110])
        merged = run.merge_swapped(res, swapped)
        ratio = merged["ratios"][f"sidecar/{run.BASELINE}"]
        self.assertAlmostEqual(ratio["rps_paired"]["mean"], 1.0)
        self.assertEqual(len(merged["proxies"][run.SIDECAR]["rounds"]), 4)

    def test_a_real_difference_survives(self):
        # The new build is 5 % faster, the second slot 10 %.
        res = measured([105, 105, 106], [110, 110, 110])
        swapped = measured([100, 100, 100], [115.5, 115.5, 116])
        merged = run.merge_swapped(res, swapped)
        mean = merged["ratios"][f"sidecar/{run.BASELINE}"]["rps_paired"]["mean"]
        self.assertAlmostEqual(mean, 1.05, places=2)


class StaleBinary(unittest.TestCase):
    def setUp(self):
        self.repo = Path(tempfile.mkdtemp())
        (self.repo / "src" / "proxy").mkdir(parents=True)
        self.binary = self.repo / "token-sidecar"
        for f in ("src/main.rs", "src/proxy/pool.rs", "Cargo.toml", "token-sidecar"):
            (self.repo / f).write_text("x")
            os.utime(self.repo / f, (1000, 1000))

    def test_a_binary_built_after_every_source_is_current(self):
        os.utime(self.binary, (2000, 2000))
        self.assertEqual(run.newer_sources(self.binary, self.repo), [])

    def test_a_source_changed_after_the_build_is_named(self):
        os.utime(self.binary, (2000, 2000))
        os.utime(self.repo / "src/proxy/pool.rs", (3000, 3000))
        os.utime(self.repo / "Cargo.toml", (2500, 2500))
        self.assertEqual(run.newer_sources(self.binary, self.repo),
                         ["src/proxy/pool.rs", "Cargo.toml"])

    def test_a_missing_binary_is_not_judged(self):
        self.assertEqual(run.newer_sources(self.repo / "nope", self.repo), [])


class PairedVerdict(unittest.TestCase):
    def test_consistently_ahead(self):
        v = run.paired_verdict([1.10, 1.12, 1.08, 1.11, 1.09])
        self.assertEqual(v["verdict"], "ahead")
        self.assertGreater(v["lo"], 1)
        self.assertAlmostEqual(v["mean"], 1.10, places=2)

    def test_consistently_behind(self):
        self.assertEqual(run.paired_verdict([0.90, 0.92, 0.88, 0.91, 0.89])["verdict"], "behind")

    def test_ahead_in_most_rounds_but_spread_wide_is_level(self):
        v = run.paired_verdict([1.20, 1.15, 0.80, 1.10, 0.85])
        self.assertEqual(v["verdict"], "level")
        self.assertLess(v["lo"], 1)
        self.assertGreater(v["hi"], 1)

    def test_the_interval_is_symmetric_in_the_logs(self):
        v = run.paired_verdict([0.5, 2.0])
        self.assertAlmostEqual(v["mean"], 1.0)
        self.assertAlmostEqual(v["lo"] * v["hi"], 1.0)
        # Two rounds: t = 12.706 with 1 degree of freedom, so the interval is wide.
        self.assertLess(v["lo"], 0.01)

    def test_one_round_cannot_be_judged(self):
        self.assertIsNone(run.paired_verdict([1.5]))
        self.assertIsNone(run.paired_verdict([]))

    def test_the_verdict_is_printed_with_the_rounds(self):
        r = run.ratios(variant([110, 112, 108], [100, 100, 100]))[f"sidecar/{run.HAPROXY}"]
        self.assertRegex(run.per_round(r, "x"),
                         r"^per round x1.08-1.12, ahead in 3 of 3; mean x1.10, "
                         r"95% CI x1.0\d-1.1\d: ahead$")
        self.assertEqual(run.verdicts({"get": dict(ratios={f"sidecar/{run.HAPROXY}": r})}),
                         [f"get              ahead of {run.HAPROXY} (x{r['rps_paired']['lo']:.2f}-"
                          f"{r['rps_paired']['hi']:.2f})"])


if __name__ == "__main__":
    unittest.main()
