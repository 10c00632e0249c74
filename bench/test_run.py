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


# --------------------------------------------------------------------------------------------
# the rate-decision variants (get-rl-local, get-rl-shared)

class RateLimitConfig(unittest.TestCase):
    def setUp(self):
        import tomllib
        self.conf = tomllib.loads(run.rate_limit_config("127.0.0.1:8080", "http://127.0.0.1:9000",
                                                        "abc"))

    def test_the_get_route_with_one_rule_over_every_path(self):
        (route,) = self.conf["route"]
        self.assertEqual(route["listen"], "127.0.0.1:8080")
        self.assertEqual(route["upstream"], "http://127.0.0.1:9000")
        self.assertEqual(route["limit"], [dict(group="bench", match=["/**"], rate="100000/1s")])

    def test_a_static_token_for_the_route(self):
        route = self.conf["route"][0]
        self.assertEqual(self.conf["token"][route["token"]],
                         dict(grant="static", static_token="abc"))

    def test_the_rate_never_binds_at_the_load_of_get(self):
        n, window = run.RL_RATE.split("/")
        self.assertEqual(window, "1s")
        # paced over 1.1 s (the window and a tenth of it): about 91,000 req/s
        self.assertGreater(int(n) / 1.1, 80_000)
        self.assertLessEqual(int(n), 100_000)   # the most a rate may count (MAX_EVENTS)


class SidecarArgv(unittest.TestCase):
    def test_get_takes_its_route_and_token_from_flags(self):
        argv = run.sidecar_argv("ts", 8080, 9090, "http://127.0.0.1:9000")
        self.assertEqual(argv, ["ts", "run", "--threads", "1", "--log-format", "text",
                                "--shutdown-grace", "1s", "--admin-listen", "127.0.0.1:9090",
                                "--listen", "127.0.0.1:8080", "--upstream", "http://127.0.0.1:9000",
                                "--grant", "static", "--static-token", "abc"])

    def test_a_config_file_replaces_the_route_and_token_flags(self):
        argv = run.sidecar_argv("ts", 8080, 9090, "http://127.0.0.1:9000", config="/d/x.toml")
        self.assertIn("--config", argv)
        self.assertEqual(argv[argv.index("--config") + 1], "/d/x.toml")
        for flag in ("--listen", "--upstream", "--grant", "--static-token", "--redis-url"):
            self.assertNotIn(flag, argv)
        # the settings that are not the route's stay as in `get`
        self.assertEqual(argv[:9], run.sidecar_argv("ts", 8080, 9090, "u")[:9])

    def test_shared_adds_the_redis_url(self):
        argv = run.sidecar_argv("ts", 8080, 9090, "u", config="c", redis_url="redis://127.0.0.1:6/0")
        self.assertEqual(argv[-2:], ["--redis-url", "redis://127.0.0.1:6/0"])


class VariantKinds(unittest.TestCase):
    def kinds(self, name, proxies=run.DEFAULT_PROXIES, direct=True):
        return run.variant_kinds(run.VARIANTS[name], proxies, direct)

    def test_rate_decisions_against_the_same_build_without_the_rule(self):
        for name in ("get-rl-local", "get-rl-shared"):
            self.assertEqual(self.kinds(name), [run.SIDECAR, run.SIDECAR_GET])

    def test_and_against_the_baseline_build_with_the_rule(self):
        self.assertEqual(self.kinds("get-rl-shared", run.DEFAULT_PROXIES + [run.BASELINE]),
                         [run.SIDECAR, run.SIDECAR_GET, run.BASELINE])

    def test_neither_nginx_nor_haproxy(self):
        self.assertEqual(self.kinds("get-rl-local", [run.NGINX, run.HAPROXY]), [])

    def test_no_reference_without_token_sidecar(self):
        self.assertEqual(self.kinds("get-rl-local", [run.BASELINE]), [run.BASELINE])

    def test_the_other_variants_as_before(self):
        self.assertEqual(self.kinds("get"), [run.SIDECAR, run.HAPROXY, run.NGINX, run.DIRECT])
        self.assertEqual(self.kinds("get", direct=False), [run.SIDECAR, run.HAPROXY, run.NGINX])
        self.assertEqual(self.kinds("rotate"), [run.SIDECAR])

    def test_next_to_get(self):
        names = list(run.VARIANTS)
        self.assertEqual(names[:3], ["get", "get-rl-local", "get-rl-shared"])


class RequiredTools(unittest.TestCase):
    def test_redis_only_for_the_shared_variant(self):
        self.assertNotIn("redis-server", run.required_tools(["get", "get-rl-local"]))
        self.assertEqual(run.required_tools(["get-rl-shared"])["redis-server"], "redis-server")
        self.assertLessEqual(set(run.TOOLS), set(run.required_tools(["get-rl-shared"])))


def limits_doc(rules=({"group": "bench", "rate": "100000/1s"},), shared=None, mode="reject"):
    route = {"mode": mode, "rules": list(rules), "shared": shared, "blocks": []}
    if mode == "off":
        route = {"mode": "off"}
    return {"routes": {"bench": route}, "now": 1}


class RuleProblem(unittest.TestCase):
    def test_a_local_rule_in_force(self):
        self.assertIsNone(run.rule_problem(limits_doc(), shared=False))

    def test_a_shared_rule_in_force(self):
        self.assertIsNone(run.rule_problem(limits_doc(shared={"up": True}), shared=True))

    def test_no_rule(self):
        self.assertIn("no rule of group 'bench'", run.rule_problem(limits_doc(rules=()), False))

    def test_a_rule_without_a_rate_decides_nothing(self):
        doc = limits_doc(rules=({"group": "bench", "rate": None},))
        self.assertIn("no rule", run.rule_problem(doc, shared=False))

    def test_off(self):
        self.assertIn("off", run.rule_problem(limits_doc(mode="off"), shared=False))

    def test_redis_away_or_missing(self):
        self.assertIn("not shared", run.rule_problem(limits_doc(shared={"up": False}), True))
        self.assertIn("not shared", run.rule_problem(limits_doc(), shared=True))

    def test_shared_where_local_is_measured(self):
        self.assertIn("shared", run.rule_problem(limits_doc(shared={"up": True}), shared=False))


METRICS = """\
# HELP token_sidecar_requests_total Requests answered to the app, by route and status code sent back.
# TYPE token_sidecar_requests_total counter
token_sidecar_requests_total{route="bench",status="200"} 81234
token_sidecar_requests_total{route="bench",status="429"} 3
# TYPE token_sidecar_rate_limited_total counter
token_sidecar_rate_limited_total{group="bench",route="bench",source="paced"} 5
# TYPE token_sidecar_shared_store_operations_total counter
token_sidecar_shared_store_operations_total{op="rate",result="ok",token="bench"} 81230
token_sidecar_shared_store_operations_total{op="rate",result="error",token="bench"} 2
token_sidecar_requests_totally_different 7
"""


class RateLimitStats(unittest.TestCase):
    def test_samples_by_name_with_their_labels(self):
        got = run.prometheus_samples(METRICS, "token_sidecar_requests_total")
        self.assertEqual(got, [({"route": "bench", "status": "200"}, 81234.0),
                               ({"route": "bench", "status": "429"}, 3.0)])
        self.assertEqual(run.prometheus_samples("x 1\nx{a=\"b\\\"c\"} 2\n", "x"),
                         [({}, 1.0), ({"a": 'b\\"c'}, 2.0)])

    def test_shared(self):
        self.assertEqual(run.rate_limit_stats(METRICS, shared=True),
                         dict(requests=81237, non_2xx=3, rate_limited=5, redis_decisions=81230,
                              redis_failures=2))

    def test_local_has_no_redis_counts(self):
        self.assertEqual(run.rate_limit_stats(METRICS, shared=False),
                         dict(requests=81237, non_2xx=3, rate_limited=5))

    def test_nothing_counted_yet(self):
        self.assertEqual(run.rate_limit_stats("", shared=True),
                         dict(requests=0, non_2xx=0, rate_limited=0, redis_decisions=0,
                              redis_failures=0))

    def test_the_line(self):
        self.assertEqual(run.rate_limit_line("token-sidecar", run.rate_limit_stats(METRICS, True)),
                         "rate decisions, token-sidecar: 81,237 requests, 3 not 2xx, 5 waited or "
                         "refused, 81,230 decided in Redis, 2 Redis failures")


class RateLimitProblems(unittest.TestCase):
    CLEAN = dict(requests=1000, non_2xx=0, rate_limited=0, redis_decisions=1000, redis_failures=0)

    def test_every_request_decided_and_let_go(self):
        self.assertEqual(run.rate_limit_problems("get-rl-shared", run.SIDECAR, self.CLEAN), [])
        local = {k: self.CLEAN[k] for k in ("requests", "non_2xx", "rate_limited")}
        self.assertEqual(run.rate_limit_problems("get-rl-local", run.SIDECAR, local), [])

    def test_each_way_the_numbers_would_not_be_a_decisions_cost(self):
        stats = run.rate_limit_stats(METRICS, shared=True)
        got = run.rate_limit_problems("get-rl-shared", run.SIDECAR, stats)
        self.assertEqual(len(got), 4)
        for text, what in zip(got, ("another status than 2xx", "the load reached it",
                                    "2 Redis operations failed", "only 81,230 of 81,237")):
            self.assertTrue(text.startswith(f"get-rl-shared/{run.SIDECAR}: "), text)
            self.assertIn(what, text)


def rl_variant(rule, no_rule, baseline=None, redis=None):
    """A rate-decision variant: token-sidecar with the rule, the same build without it, and
    maybe the baseline build with it."""
    def entry(rps, cpu):
        rounds = [dict(full_round(x), cpu_us_per_req=cpu) for x in rps]
        if redis is not None:
            rounds = [dict(r, redis_cpu_us_per_req=redis) for r in rounds]
        return dict(rounds=rounds, summary=run.summarize(rounds), discarded_rounds=[])
    res = dict(proxies={run.SIDECAR: entry(rule, 11.0), run.SIDECAR_GET: entry(no_rule, 10.0)},
               labels=dict(run.RL_LABELS), extra={})
    if baseline:
        res["proxies"][run.BASELINE] = entry(baseline, 11.0)
    res["labels"] = {k: v for k, v in run.RL_LABELS.items() if k in res["proxies"]}
    res["ratios"] = run.ratios(res)
    return res


class AgainstTheSameBuild(unittest.TestCase):
    def test_the_ratio_is_named_after_get(self):
        r = rl_variant([97, 96, 98], [100, 100, 100])["ratios"]
        self.assertEqual(list(r), ["sidecar/get"])
        self.assertAlmostEqual(r["sidecar/get"]["cpu_us_added"], 1.0)
        self.assertEqual(run.cpu_added(r["sidecar/get"], "us"), " (+1.0 us)")

    def test_other_ratios_carry_no_added_cpu(self):
        r = run.ratios(variant([110, 90], [100, 100]))[f"sidecar/{run.HAPROXY}"]
        self.assertNotIn("cpu_us_added", r)
        self.assertEqual(run.cpu_added(r, "us"), "")

    def test_the_verdict_reads_as_a_share_of_get(self):
        res = rl_variant([97, 96, 98, 97], [100, 100, 100, 100])
        (line,) = run.verdicts({"get-rl-local": res})
        p = res["ratios"]["sidecar/get"]["rps_paired"]
        self.assertEqual(line, f"get-rl-local     x0.97 of get (slower, x{p['lo']:.2f}-"
                               f"{p['hi']:.2f})")

    def test_level(self):
        res = rl_variant([99, 101, 98, 102], [100, 100, 100, 100])
        self.assertRegex(run.verdicts({"get-rl-local": res})[0],
                         r"^get-rl-local     x1.00 of get \(level, x0.9\d-1.0\d\)$")

    def test_one_round(self):
        res = rl_variant([97], [100])
        self.assertEqual(run.verdicts({"get-rl-shared": res}),
                         ["get-rl-shared    x0.97 of get (too few rounds to judge)"])

    def test_and_the_baseline_build_with_the_rule(self):
        res = rl_variant([97, 96, 98], [100, 100, 100], baseline=[97, 96, 98])
        self.assertEqual(list(res["ratios"]), ["sidecar/get", f"sidecar/{run.BASELINE}"])
        line = run.verdicts({"get-rl-local": res})[0]
        self.assertRegex(line, r"^get-rl-local     x0.97 of get \(slower, .*\); "
                               r"level with baseline \(x1.00-1.00\)$")

    def test_the_tables_name_the_configurations(self):
        res = rl_variant([97], [100], redis=3.25)
        rows = run.table("get-rl-shared", res).splitlines()[2:]
        self.assertTrue(rows[0].startswith("token-sidecar (rate decision)  "))
        self.assertTrue(rows[1].startswith("token-sidecar (no rule)  "))
        self.assertEqual(run.proxy_label(run.HAPROXY, res), run.HAPROXY)
        self.assertEqual(run.redis_cpu(res), {run.SIDECAR: 3.25, run.SIDECAR_GET: 3.25})


class SwappedWithAReference(unittest.TestCase):
    def test_the_reference_rounds_pool_with_the_build_under_test(self):
        first = rl_variant([96, 96], [100, 100], baseline=[90, 90])
        # swapped: the baseline build in token-sidecar's slot, the build under test in the other
        second = rl_variant([90, 90], [100, 100], baseline=[96, 96])
        stats = dict(requests=10, non_2xx=0, rate_limited=0)
        first["extra"]["rate_limit"] = {run.SIDECAR: dict(stats), run.BASELINE: dict(stats, requests=7)}
        second["extra"]["rate_limit"] = {run.SIDECAR: dict(stats, requests=5), run.BASELINE: dict(stats)}
        merged = run.merge_swapped(first, second)
        self.assertEqual(len(merged["proxies"][run.SIDECAR_GET]["rounds"]), 4)
        self.assertEqual(merged["ratios"]["sidecar/get"]["rps_rounds"], [0.96] * 4)
        self.assertAlmostEqual(merged["ratios"][f"sidecar/{run.BASELINE}"]["rps_paired"]["mean"],
                               96 / 90)
        # each build's counts, from its slot in each run
        self.assertEqual(merged["extra"]["rate_limit"][run.SIDECAR]["requests"], 20)
        self.assertEqual(merged["extra"]["rate_limit"][run.BASELINE]["requests"], 12)


def results_with(name, errors=0, other_cpu=0.0, extra=None):
    summary = dict(errors=errors, other_cpu_pct_max=other_cpu)
    return {name: dict(proxies={run.SIDECAR: dict(summary=summary, discarded_rounds=[])},
                       extra=extra or {})}


class FindProblems(unittest.TestCase):
    def test_non_2xx_fail_a_rate_decision_variant(self):
        problems, fatal = run.find_problems({}, results_with("get-rl-local", errors=3))
        self.assertEqual(problems, [f"get-rl-local/{run.SIDECAR}: 3 errors or non-2xx"])
        self.assertEqual(fatal, problems)

    def test_but_not_get(self):
        problems, fatal = run.find_problems({}, results_with("get", errors=3))
        self.assertEqual(len(problems), 1)
        self.assertEqual(fatal, [])

    def test_a_decision_that_waited_fails_the_run(self):
        stats = dict(requests=10, non_2xx=0, rate_limited=1)
        problems, fatal = run.find_problems(
            {}, results_with("get-rl-local", extra=dict(rate_limit={run.SIDECAR: stats})))
        self.assertEqual(len(fatal), 1)
        self.assertIn("waited for or were refused", fatal[0])

    def test_a_busy_machine_is_reported_not_fatal(self):
        problems, fatal = run.find_problems({}, results_with("get-rl-shared", other_cpu=40))
        self.assertIn("other processes used up to 40%", problems[0])
        self.assertEqual(fatal, [])

    def test_every_problem_of_rotate_fails_it_as_before(self):
        for kw in (dict(errors=1), dict(other_cpu=40)):
            problems, fatal = run.find_problems({}, results_with("rotate", **kw))
            self.assertEqual(fatal, problems)
            self.assertEqual(len(fatal), 1)

    def test_a_stale_binary_is_reported(self):
        problems, fatal = run.find_problems(dict(token_sidecar_older_than=["src/main.rs"]), {})
        self.assertIn("older than the sources (src/main.rs)", problems[0])
        self.assertEqual(fatal, [])


if __name__ == "__main__":
    unittest.main()
