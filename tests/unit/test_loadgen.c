/* test_loadgen: the serve-bench workload generator (lib/loadgen.h) and its
 * metrics (lib/serve_metrics.h): length specs, determinism, arrival-process
 * statistics, vLLM's metric definitions on a hand-made timeline, numpy-linear
 * percentiles, records with a fixed key order, and the table.
 * Usage: test_loadgen SCRATCH_DIR (the records are written there). */
#include "loadgen.h"
#include "mpk.h"
#include "serve_metrics.h"
#include "test_harness.h"

#include <math.h>

static const char *scratch;

static bool near(double got, double want, double tol)
{
    return fabs(got - want) <= tol;
}
#define CHECK_NEAR(got, want, tol)                                                              \
    CHECK_MSG(near((got), (want), (tol)), "%s = %.17g, want %.17g (+- %g)", #got, (double)(got), \
              (double)(want), (double)(tol))

/* ---- length specs ---- */

static void test_len_spec(void)
{
    len_spec s;
    char err[256];
    CHECK(len_spec_parse("3500", &s, err, sizeof err) && s.kind == LEN_FIXED && s.a == 3500);
    CHECK(len_spec_parse("1", &s, err, sizeof err) && s.kind == LEN_FIXED && s.a == 1);
    CHECK(len_spec_parse("uniform:100:200", &s, err, sizeof err) && s.kind == LEN_UNIFORM && s.a == 100 &&
          s.b == 200);
    CHECK(len_spec_parse("uniform:7:7", &s, err, sizeof err) && s.kind == LEN_UNIFORM && s.a == 7 && s.b == 7);
    CHECK(len_spec_parse("normal:300:50", &s, err, sizeof err) && s.kind == LEN_NORMAL && s.a == 300 && s.b == 50);
    CHECK(len_spec_parse("normal:2.5:0", &s, err, sizeof err) && s.kind == LEN_NORMAL && s.a == 2.5 && s.b == 0);
    CHECK(len_spec_parse("normal:1e2:1.5e1", &s, err, sizeof err) && s.a == 100 && s.b == 15);

    static const char *const bad[] = {
        "",  "0",  "-5", "+5",  " 5",   "5 ",   "3.5", "1e3", "12x", "16777217", "99999999999999999999999",
        "uniform", "uniform:", "uniform:1", "uniform:1:", "uniform::5", "uniform:0:5", "uniform:5:4",
        "uniform:1:2:3", "uniform:1.5:3", "uniform:-1:3", "normal:0:5", "normal:-3:1", "normal:10:-1",
        "normal:nan:1", "normal:10:inf", "normal:inf:1", "normal:10", "normal:10:", "normal: 10:1", "normal:1e9:1",
        "gauss:1:2", "Uniform:1:2", ":5", "5:", "fixed:5",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        s.kind = LEN_FIXED;
        s.a = 42;
        bool ok = len_spec_parse(bad[i], &s, err, sizeof err);
        CHECK_MSG(!ok, "'%s' should be refused", bad[i]);
        CHECK_MSG(!ok && s.a == 42, "'%s' refused but *out changed", bad[i]);
        CHECK_MSG(strstr(err, bad[i]) && strstr(err, "expected") && !strchr(err, '\n'),
                  "'%s': message should quote the input and say what was expected: %s", bad[i], err);
    }

    /* format reads back */
    static const char *const good[] = {"3500", "uniform:1:16777216", "normal:300:50", "normal:0.1:1e-05"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        len_spec a, b;
        char buf[128];
        CHECK(len_spec_parse(good[i], &a, err, sizeof err));
        len_spec_format(&a, buf, sizeof buf);
        CHECK_MSG(len_spec_parse(buf, &b, err, sizeof err) && a.kind == b.kind && a.a == b.a && a.b == b.b,
                  "'%s' formatted as '%s' does not read back", good[i], buf);
    }
    CHECK(len_spec_parse("uniform:10:21", &s, err, sizeof err) && len_spec_mean(&s) == 15.5);
    printf("length specs: %zu refused\n", sizeof bad / sizeof *bad);
}

/* ---- workloads ---- */

static workload_spec spec_of(size_t n, double rate, double k, const char *prompt, const char *output,
                             uint64_t seed)
{
    workload_spec w = {.n_requests = n, .rate = rate, .burstiness = k, .seed = seed, .vocab = 1000};
    char err[256];
    if (!len_spec_parse(prompt, &w.prompt, err, sizeof err) || !len_spec_parse(output, &w.output, err, sizeof err))
        upc_fail(EX_SOFTWARE, "test spec: %s", err);
    return w;
}

static bool same_requests(const request *a, const request *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i].arrival_s != b[i].arrival_s || a[i].prompt_len != b[i].prompt_len ||
            a[i].output_len != b[i].output_len ||
            memcmp(a[i].prompt, b[i].prompt, a[i].prompt_len * sizeof *a[i].prompt) != 0)
            return false;
    }
    return true;
}

static void test_determinism(void)
{
    const size_t n = 200;
    workload_spec w = spec_of(n, 5.0, 0.5, "uniform:5:50", "normal:20:8", 1234);
    request *a = workload_make(&w), *b = workload_make(&w);
    CHECK(a && b && same_requests(a, b, n));
    w.seed = 1235;
    request *c = workload_make(&w);
    size_t same_arrival = 0, same_len = 0, same_tok0 = 0;
    for (size_t i = 1; i < n; i++) {
        same_arrival += a[i].arrival_s == c[i].arrival_s;
        same_len += a[i].prompt_len == c[i].prompt_len && a[i].output_len == c[i].output_len;
        same_tok0 += a[i].prompt[0] == c[i].prompt[0];
    }
    CHECK_MSG(same_arrival == 0 && same_len < n / 4 && same_tok0 < n / 4,
              "seeds 1234 and 1235 give the same requests: %zu arrivals, %zu lengths, %zu first tokens", same_arrival,
              same_len, same_tok0);

    /* common random numbers: another rate scales the arrivals, keeps the requests */
    w.seed = 1234;
    w.rate = 20.0;
    request *d = workload_make(&w);
    double worst = 0;
    bool same_prompts = true;
    for (size_t i = 0; i < n; i++) {
        double rel = fabs(d[i].arrival_s * 4.0 - a[i].arrival_s) / (a[i].arrival_s + 1e-300);
        if (i > 0 && rel > worst)
            worst = rel;
        same_prompts = same_prompts && d[i].prompt_len == a[i].prompt_len && d[i].output_len == a[i].output_len &&
                       memcmp(d[i].prompt, a[i].prompt, a[i].prompt_len * sizeof *a[i].prompt) == 0;
    }
    CHECK_MSG(worst < 1e-12, "arrivals at rate 20 are not those at rate 5 divided by 4 (relative error %g)", worst);
    CHECK(same_prompts);

    /* the length spec does not move the arrivals */
    workload_spec w2 = spec_of(n, 5.0, 0.5, "64", "16", 1234);
    request *e = workload_make(&w2);
    bool same_arrivals = true;
    for (size_t i = 0; i < n; i++)
        same_arrivals = same_arrivals && e[i].arrival_s == a[i].arrival_s;
    CHECK(same_arrivals);

    /* pinned: the first values for seed 1234 stay the same from build to build */
    printf("digest: seed 1234 request 1 arrival %.17g prompt_len %zu output_len %zu token0 %u\n", a[1].arrival_s,
           a[1].prompt_len, a[1].output_len, a[1].prompt[0]);

    workload_free(a, n);
    workload_free(b, n);
    workload_free(c, n);
    workload_free(d, n);
    workload_free(e, n);

    w.n_requests = 0;
    CHECK(workload_make(&w) == NULL);
    workload_free(NULL, 0);
}

/* Intervals between consecutive arrivals of n + 1 requests. */
static double *intervals(double rate, double k, size_t n, uint64_t seed)
{
    workload_spec w = spec_of(n + 1, rate, k, "1", "1", seed);
    request *r = workload_make(&w);
    double *iv = upc_malloc(n * sizeof *iv);
    CHECK(r[0].arrival_s == 0.0);
    bool monotone = true;
    for (size_t i = 0; i < n; i++) {
        iv[i] = r[i + 1].arrival_s - r[i].arrival_s;
        monotone = monotone && iv[i] >= 0;
    }
    CHECK_MSG(monotone, "arrivals decrease (rate %g, k %g)", rate, k);
    workload_free(r, n + 1);
    return iv;
}

static void mean_cv(const double *x, size_t n, double *mean, double *cv)
{
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    *mean = s / (double)n;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *cv = sqrt(ss / (double)(n - 1)) / *mean;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Kolmogorov-Smirnov distance of x (sorted in place) from the CDF. */
static double ks(double *x, size_t n, double (*cdf)(double, double), double param)
{
    qsort(x, n, sizeof *x, cmp_d);
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double f = cdf(x[i], param);
        double lo = f - (double)i / (double)n, hi = (double)(i + 1) / (double)n - f;
        if (lo > d)
            d = lo;
        if (hi > d)
            d = hi;
    }
    return d;
}

/* Exponential with mean 1 / rate. */
static double exp_cdf(double x, double rate)
{
    return 1.0 - exp(-rate * x);
}

/* Gamma(4, theta) (Erlang): 1 - e^(-y) (1 + y + y^2/2 + y^3/6), y = x / theta. */
static double erlang4_cdf(double x, double theta)
{
    double y = x / theta;
    return 1.0 - exp(-y) * (1.0 + y + y * y / 2.0 + y * y * y / 6.0);
}

static void test_arrivals(void)
{
    const size_t n = 20000;
    /* KS critical value at alpha = 0.001 is 1.95 / sqrt(n) = 0.0138 */
    const double ks_crit = 1.95 / sqrt((double)n);
    double mean, cv;

    /* Poisson, rate 4: mean 0.25 s (standard error 0.7%), CV 1 (about 1%) */
    double *iv = intervals(4.0, 1.0, n, 7);
    mean_cv(iv, n, &mean, &cv);
    CHECK_NEAR(mean, 0.25, 0.25 * 0.035);
    CHECK_NEAR(cv, 1.0, 0.05);
    double d = ks(iv, n, exp_cdf, 4.0);
    CHECK_MSG(d < ks_crit, "Poisson intervals: KS distance %g from Exp(4), critical %g", d, ks_crit);
    printf("poisson rate 4: mean %.4f s cv %.4f ks %.4f\n", mean, cv, d);
    free(iv);

    /* gamma k = 0.25 (bursty), rate 10: mean 0.1 (1.4%), CV 1/sqrt(k) = 2 (about 2%) */
    iv = intervals(10.0, 0.25, n, 8);
    mean_cv(iv, n, &mean, &cv);
    CHECK_NEAR(mean, 0.1, 0.1 * 0.07);
    CHECK_NEAR(cv, 2.0, 2.0 * 0.1);
    /* the shape near 0: P(X < 1 ms) = P(Gamma(0.25, 1) < 0.001 / theta),
     * theta = 1 / (rate k) = 0.4, y = 0.0025: the lower incomplete gamma
     * y^k (1/k - y/(k+1) + ...) / Gamma(k) = 0.22361 * 3.998 / 3.6256 = 0.2466
     * (sd of the fraction 0.003) */
    size_t tiny = 0;
    for (size_t i = 0; i < n; i++)
        tiny += iv[i] < 0.001;
    CHECK_MSG(fabs((double)tiny / (double)n - 0.2466) < 0.015, "gamma k=0.25: %zu of %zu intervals below 1 ms, want 24.7%%",
              tiny, n);
    printf("gamma k 0.25 rate 10: mean %.4f s cv %.4f below 1 ms %.3f\n", mean, cv, (double)tiny / (double)n);
    free(iv);

    /* gamma k = 4 (regular), rate 2: mean 0.5 (0.35%), CV 0.5 (about 0.7%);
     * shape checked against the Erlang-4 CDF, scale theta = 1 / (rate k) */
    iv = intervals(2.0, 4.0, n, 9);
    mean_cv(iv, n, &mean, &cv);
    CHECK_NEAR(mean, 0.5, 0.5 * 0.02);
    CHECK_NEAR(cv, 0.5, 0.5 * 0.05);
    d = ks(iv, n, erlang4_cdf, 1.0 / (2.0 * 4.0));
    CHECK_MSG(d < ks_crit, "gamma k=4 intervals: KS distance %g from Gamma(4, 1/8), critical %g", d, ks_crit);
    printf("gamma k 4 rate 2: mean %.4f s cv %.4f ks %.4f\n", mean, cv, d);
    free(iv);

    /* burst: rate inf, 0 and negative all put every request at 0, whatever k */
    double rates[] = {INFINITY, 0.0, -1.0};
    for (int j = 0; j < 3; j++) {
        workload_spec w = spec_of(500, rates[j], 0.0 /* ignored for burst */, "8", "8", 3);
        CHECK(workload_arrival_kind(&w) == ARRIVAL_BURST);
        request *r = workload_make(&w);
        bool zero = true;
        for (size_t i = 0; i < 500; i++)
            zero = zero && r[i].arrival_s == 0.0;
        CHECK_MSG(zero, "rate %g: not every arrival at 0", rates[j]);
        workload_free(r, 500);
    }
    workload_spec w = spec_of(1, 3.0, 1.0, "1", "1", 1);
    CHECK(workload_arrival_kind(&w) == ARRIVAL_POISSON);
    w.burstiness = 0.5;
    CHECK(workload_arrival_kind(&w) == ARRIVAL_GAMMA);
}

static void test_lengths(void)
{
    const size_t n = 20000;
    char err[256];

    /* uniform:3:7 for prompts, fixed 9 for outputs: every value 3..7 about n/5 */
    workload_spec w = spec_of(n, 1.0, 1.0, "uniform:3:7", "9", 11);
    w.vocab = 50;
    request *r = workload_make(&w);
    size_t count[8] = {0}, out_ok = 0, tok_ok = 0, tok_n = 0;
    double tok_sum = 0;
    size_t tok_hist[50] = {0};
    for (size_t i = 0; i < n; i++) {
        if (r[i].prompt_len >= 3 && r[i].prompt_len <= 7)
            count[r[i].prompt_len]++;
        out_ok += r[i].output_len == 9;
        for (size_t j = 0; j < r[i].prompt_len; j++) {
            tok_ok += r[i].prompt[j] < 50;
            tok_sum += r[i].prompt[j];
            if (r[i].prompt[j] < 50)
                tok_hist[r[i].prompt[j]]++;
            tok_n++;
        }
    }
    size_t in_range = count[3] + count[4] + count[5] + count[6] + count[7];
    CHECK_MSG(in_range == n, "uniform:3:7 gave %zu lengths outside [3, 7]", n - in_range);
    for (int v = 3; v <= 7; v++)   /* n/5 = 4000, sd 57: +- 300 is over 5 sd */
        CHECK_MSG(count[v] > 3700 && count[v] < 4300, "uniform:3:7: length %d drawn %zu times of %zu", v, count[v], n);
    CHECK(out_ok == n);
    CHECK(tok_ok == tok_n);
    CHECK_NEAR(tok_sum / (double)tok_n, 24.5, 0.3);   /* sd of the mean 0.1 */
    size_t tok_min = tok_n, tok_max = 0;
    for (int t = 0; t < 50; t++) {
        tok_min = tok_hist[t] < tok_min ? tok_hist[t] : tok_min;
        tok_max = tok_hist[t] > tok_max ? tok_hist[t] : tok_max;
    }
    /* about 100000 tokens: 2000 per id, sd 44 */
    CHECK_MSG(tok_min > 1750 && tok_max < 2250, "token ids not uniform: %zu to %zu per id", tok_min, tok_max);
    workload_free(r, n);

    /* normal:300:50 outputs: mean 300 (sd of the mean 0.35), sd 50 */
    w = spec_of(n, 1.0, 1.0, "1", "normal:300:50", 12);
    r = workload_make(&w);
    double s = 0, ss = 0;
    size_t lo = SIZE_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        s += (double)r[i].output_len;
        ss += (double)r[i].output_len * (double)r[i].output_len;
        lo = r[i].output_len < lo ? r[i].output_len : lo;
        hi = r[i].output_len > hi ? r[i].output_len : hi;
    }
    double mean = s / (double)n, sd = sqrt(ss / (double)n - mean * mean);
    CHECK_NEAR(mean, 300.0, 2.0);
    CHECK_NEAR(sd, 50.0, 2.5);
    CHECK(lo >= 1 && lo < 150 && hi > 450);
    printf("normal:300:50: mean %.2f sd %.2f range %zu..%zu\n", mean, sd, lo, hi);
    workload_free(r, n);

    /* normal:2:10 is clipped to >= 1: about 44% of the draws fall below 0.5 */
    w = spec_of(n, 1.0, 1.0, "normal:2:10", "1", 13);
    r = workload_make(&w);
    size_t ones = 0, zero_or_less = 0;
    for (size_t i = 0; i < n; i++) {
        ones += r[i].prompt_len == 1;
        zero_or_less += r[i].prompt_len < 1;
        CHECK(r[i].prompt_len == 0 || r[i].prompt != NULL);
    }
    CHECK(zero_or_less == 0);
    /* P(round(2 + 10 z) <= 1) = P(z < -0.05) = 0.48 */
    CHECK_MSG(ones > 0.45 * n && ones < 0.51 * n, "normal:2:10: %zu of %zu clipped to 1", ones, n);
    workload_free(r, n);

    /* normal with sd 0 is exactly the rounded mean */
    CHECK(len_spec_parse("normal:17.4:0", &w.prompt, err, sizeof err));
    w.n_requests = 100;
    r = workload_make(&w);
    bool all17 = true;
    for (size_t i = 0; i < 100; i++)
        all17 = all17 && r[i].prompt_len == 17;
    CHECK(all17);
    workload_free(r, 100);
}

static void make_bad_burstiness(const void *arg)
{
    (void)arg;
    workload_spec w = spec_of(10, 2.0, 0.0, "1", "1", 1);
    workload_make(&w);
}

static void make_bad_vocab(const void *arg)
{
    (void)arg;
    workload_spec w = spec_of(10, 2.0, 1.0, "1", "1", 1);
    w.vocab = 0;
    workload_make(&w);
}

static void make_bad_len(const void *arg)
{
    (void)arg;
    workload_spec w = spec_of(10, 2.0, 1.0, "1", "1", 1);
    w.output.kind = LEN_UNIFORM;
    w.output.a = 5;
    w.output.b = 4;
    workload_make(&w);
}

static void test_bad_spec(void)
{
    char err[256];
    workload_spec w = spec_of(10, 2.0, 1.0, "1", "1", 1);
    CHECK(workload_spec_check(&w, err, sizeof err));
    w.rate = NAN;
    CHECK(!workload_spec_check(&w, err, sizeof err) && strstr(err, "NaN"));
    w.rate = 2.0;
    w.burstiness = INFINITY;
    CHECK(!workload_spec_check(&w, err, sizeof err) && strstr(err, "burstiness"));
    w.burstiness = -1;
    CHECK(!workload_spec_check(&w, err, sizeof err) && strstr(err, "burstiness"));
    w.rate = INFINITY;   /* burstiness does not matter for a burst */
    CHECK(workload_spec_check(&w, err, sizeof err));
    w.prompt.a = 0;
    CHECK(!workload_spec_check(&w, err, sizeof err) && strstr(err, "length"));
    EXPECT_FAIL(make_bad_burstiness, NULL, EX_USAGE, "burstiness 0", "gamma shape > 0");
    EXPECT_FAIL(make_bad_vocab, NULL, EX_USAGE, "vocabulary");
    EXPECT_FAIL(make_bad_len, NULL, EX_USAGE, "length spec");
}

/* ---- metrics ---- */

static void test_percentile(void)
{
    double a[] = {1, 2, 3, 4};
    CHECK(percentile(a, 4, 50) == 2.5);    /* np.percentile([1,2,3,4], 50) */
    CHECK(percentile(a, 4, 0) == 1);
    CHECK(percentile(a, 4, 100) == 4);
    CHECK(percentile(a, 4, 25) == 1.75);   /* index 0.75 */
    CHECK_NEAR(percentile(a, 4, 90), 3.7, 1e-15);   /* index 2.7 */
    double b[11];
    for (int i = 0; i <= 10; i++)
        b[i] = i * 10.0;
    CHECK_NEAR(percentile(b, 11, 37), 37.0, 1e-12);
    CHECK_NEAR(percentile(b, 11, 99), 99.0, 1e-12);
    double one = 5.5;
    CHECK(percentile(&one, 1, 0) == 5.5 && percentile(&one, 1, 99) == 5.5 && percentile(&one, 1, 100) == 5.5);
    CHECK(isnan(percentile(NULL, 0, 50)));
    /* numpy's _lerp works from the upper end when t >= 0.5: index 2.97,
     * b - (b - a) * (1 - t) = 15390.315859999997 where a + (b - a) * t
     * rounds to 15390.315859999995 */
    double c[] = {0.0, 1.0, 7100.2709999999997, 15646.708999999999};
    CHECK_MSG(percentile(c, 4, 99) == 15390.315859999997, "p99 %.17g, not numpy's _lerp", percentile(c, 4, 99));

    dist_stats d;
    double odd[] = {5, 1, 3};
    dist_stats_of(odd, 3, &d);
    CHECK(d.median == 3 && d.min == 1 && d.max == 5 && d.mean == 3);
    dist_stats_of(NULL, 0, &d);
    CHECK(d.mean == 0 && d.median == 0 && d.p99 == 0 && d.max == 0);
}

/* The hand-made timeline (times dyadic, so every difference is exact):
 *
 *   req  arrival  prompt  output  token times                finish
 *   A    10.0     5       4       10.5 10.625 11.0 11.25     11.25
 *   B    10.25    3       1       10.75                      10.75
 *   C    10.5     8       3       11.5 11.75 12.5            12.5
 *   D    11.0     4       2       11.25 11.375               11.375
 *
 *   TTFT: A 0.5, B 0.5, C 1.0, D 0.25
 *   E2E:  A 1.25, B 0.5, C 2.0, D 0.375
 *   TPOT: A (1.25-0.5)/3 = 0.25, C (2.0-1.0)/2 = 0.5, D (0.375-0.25)/1 = 0.125;
 *         B has one output token: no TPOT (vLLM: output_len > 1 only)
 *   ITL:  A 0.125 0.375 0.25, C 0.25 0.75, D 0.125 (six gaps)
 *
 * start 10.0, last finish 12.5: duration 2.5 s; 4 requests, 20 prompt and
 * 10 output tokens: 1.6 req/s, 4 output tok/s, 12 total tok/s.
 *
 * numpy linear, index = (n - 1) p / 100:
 *   TTFT sorted .25 .5 .5 1:   mean 2.25/4 = 0.5625, median (.5+.5)/2 = 0.5,
 *        p90 idx 2.7: .5 + .5*.7 = 0.85, p99 idx 2.97: .5 + .5*.97 = 0.985
 *   TPOT sorted .125 .25 .5:   mean .875/3 = 0.291666..., median 0.25,
 *        p90 idx 1.8: .25 + .25*.8 = 0.45, p99 idx 1.98: .25 + .25*.98 = 0.495
 *        (with B counted as 0 the mean would be 0.21875)
 *   ITL sorted .125 .125 .25 .25 .375 .75: mean 1.875/6 = 0.3125,
 *        median (.25+.25)/2 = 0.25, p90 idx 4.5: .375 + .375*.5 = 0.5625,
 *        p99 idx 4.95: .375 + .375*.95 = 0.73125
 *        (the mean of per-request ITL means would be (0.25+0.5+0.125)/3)
 *   E2E sorted .375 .5 1.25 2: mean 4.125/4 = 1.03125, median (.5+1.25)/2 = 0.875,
 *        p90 idx 2.7: 1.25 + .75*.7 = 1.775, p99 idx 2.97: 1.25 + .75*.97 = 1.9775
 */
static double tok_a[] = {10.5, 10.625, 11.0, 11.25};
static double tok_b[] = {10.75};
static double tok_c[] = {11.5, 11.75, 12.5};
static double tok_d[] = {11.25, 11.375};
static const request_timing timeline[4] = {
    {10.0, 10.5, 11.25, 5, 4, tok_a, 4},
    {10.25, 10.75, 10.75, 3, 1, tok_b, 1},
    {10.5, 11.5, 12.5, 8, 3, tok_c, 3},
    {11.0, 11.25, 11.375, 4, 2, tok_d, 2},
};

static void check_dist(const char *name, const dist_stats *d, double mean, double median, double p90, double p99,
                       double mn, double mx)
{
    const double tol = 1e-12;
    CHECK_MSG(near(d->mean, mean, tol), "%s mean %.17g, want %.17g", name, d->mean, mean);
    CHECK_MSG(near(d->median, median, tol), "%s median %.17g, want %.17g", name, d->median, median);
    CHECK_MSG(near(d->p90, p90, tol), "%s p90 %.17g, want %.17g", name, d->p90, p90);
    CHECK_MSG(near(d->p99, p99, tol), "%s p99 %.17g, want %.17g", name, d->p99, p99);
    CHECK_MSG(d->min == mn && d->max == mx, "%s min %g max %g, want %g %g", name, d->min, d->max, mn, mx);
}

static void test_summary(void)
{
    serve_summary s;
    serve_summarize(timeline, 4, 10.0, &s);
    CHECK(s.completed == 4);
    CHECK(s.total_prompt_tokens == 20 && s.total_output_tokens == 10);
    CHECK(s.duration_s == 2.5);
    CHECK_NEAR(s.request_throughput, 1.6, 1e-12);
    CHECK_NEAR(s.output_throughput, 4.0, 1e-12);
    CHECK_NEAR(s.total_throughput, 12.0, 1e-12);
    check_dist("ttft", &s.ttft, 0.5625, 0.5, 0.85, 0.985, 0.25, 1.0);
    check_dist("tpot", &s.tpot, 0.875 / 3, 0.25, 0.45, 0.495, 0.125, 0.5);
    check_dist("itl", &s.itl, 0.3125, 0.25, 0.5625, 0.73125, 0.125, 0.75);
    check_dist("e2e", &s.e2e, 1.03125, 0.875, 1.775, 1.9775, 0.375, 2.0);

    /* per request */
    CHECK(request_ttft(&timeline[2]) == 1.0 && request_e2e(&timeline[2]) == 2.0 && request_tpot(&timeline[2]) == 0.5);
    CHECK(request_tpot(&timeline[1]) == 0.0 && request_itl_mean(&timeline[1]) == 0.0);
    CHECK(request_itl_mean(&timeline[0]) == 0.25);

    /* start before the first arrival lengthens the duration */
    serve_summarize(timeline, 4, 9.5, &s);
    CHECK(s.duration_s == 3.0 && near(s.request_throughput, 4.0 / 3.0, 1e-15));

    /* only one-token outputs: TPOT and ITL empty (zeros, as vLLM's `or 0`) */
    serve_summarize(&timeline[1], 1, 10.25, &s);
    CHECK(s.completed == 1 && s.tpot.mean == 0 && s.tpot.p99 == 0 && s.itl.mean == 0 && s.ttft.mean == 0.5);
    CHECK(s.duration_s == 0.5 && s.request_throughput == 2.0 && s.total_throughput == 8.0);

    /* nothing completed */
    serve_summarize(NULL, 0, 0.0, &s);
    CHECK(s.completed == 0 && s.duration_s == 0 && s.request_throughput == 0 && s.e2e.mean == 0);
    printf("timeline: ttft mean %.4f tpot mean %.4f itl mean %.4f e2e p99 %.4f\n", 0.5625, 0.875 / 3, 0.3125,
           1.9775);
}

static const char *const request_keys[] = {"event",      "label",   "index",   "arrival_s",   "prompt_len",
                                           "output_len", "ttft_ms", "tpot_ms", "e2e_ms",      "itl_ms_mean"};
static const char *const summary_keys[] = {
    "event",          "label",          "rate_rps",       "concurrency",   "completed",
    "duration_s",     "requests_per_s", "output_tokens_per_s", "total_tokens_per_s", "prompt_tokens",
    "output_tokens",  "ttft_ms_mean",   "ttft_ms_median", "ttft_ms_p90",   "ttft_ms_p99",
    "tpot_ms_mean",   "tpot_ms_median", "tpot_ms_p90",    "tpot_ms_p99",   "itl_ms_mean",
    "itl_ms_median",  "itl_ms_p90",     "itl_ms_p99",     "e2e_ms_mean",   "e2e_ms_median",
    "e2e_ms_p90",     "e2e_ms_p99"};

static bool keys_are(const msgpack_object *o, const char *const *keys, size_t n)
{
    if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!mpk_str_eq(&o->via.map.ptr[i].key, keys[i]))
            return false;
    return true;
}

static double get_d(const msgpack_object *o, const char *key)
{
    double v = NAN;
    CHECK_MSG(mpk_get_double(o, key, &v), "key %s missing or not a float", key);
    return v;
}

static uint64_t get_u(const msgpack_object *o, const char *key)
{
    uint64_t v = UINT64_MAX;
    CHECK_MSG(mpk_get_uint(o, key, &v), "key %s missing or not an unsigned integer", key);
    return v;
}

static bool str_is(const msgpack_object *o, const char *key, const char *want)
{
    const char *s;
    uint32_t n;
    return mpk_get_str(o, key, &s, &n) && n == strlen(want) && memcmp(s, want, n) == 0;
}

static void test_records(void)
{
    serve_summary s[2];
    serve_summarize(timeline, 4, 10.0, &s[0]);
    serve_summarize(timeline, 2, 10.0, &s[1]);
    char *path = upc_path_join(scratch, "serve.msgpack");
    mpk_writer w;
    mpk_writer_open(&w, path);
    for (size_t i = 0; i < 4; i++)
        serve_pack_request(&w.pk, &timeline[i], i, "tiny/dense");
    serve_pack_summary(&w.pk, &s[0], "tiny/dense", 0.0, 0);        /* burst */
    serve_pack_summary(&w.pk, &s[1], "tiny/moe-e8k2", 2.5, 16);
    mpk_writer_commit(&w);

    mpk_reader r;
    mpk_reader_open(&r, path);
    msgpack_object o;
    size_t nreq = 0, nsum = 0;
    while (mpk_read(&r, &o)) {
        if (nreq < 4) {
            const request_timing *t = &timeline[nreq];
            CHECK_MSG(keys_are(&o, request_keys, 10), "request record %zu: keys not in the documented order", nreq);
            CHECK(str_is(&o, "event", "request") && str_is(&o, "label", "tiny/dense"));
            CHECK(get_u(&o, "index") == nreq);
            CHECK(get_d(&o, "arrival_s") == t->arrival_s);
            CHECK(get_u(&o, "prompt_len") == t->prompt_len && get_u(&o, "output_len") == t->output_len);
            CHECK(get_d(&o, "ttft_ms") == request_ttft(t) * 1e3);
            CHECK(get_d(&o, "e2e_ms") == request_e2e(t) * 1e3);
            CHECK(get_d(&o, "tpot_ms") == request_tpot(t) * 1e3);
            CHECK(get_d(&o, "itl_ms_mean") == request_itl_mean(t) * 1e3);
            nreq++;
            continue;
        }
        const serve_summary *p = &s[nsum];
        CHECK_MSG(keys_are(&o, summary_keys, sizeof summary_keys / sizeof *summary_keys),
                  "sweep_point record %zu: keys not in the documented order", nsum);
        CHECK(str_is(&o, "event", "sweep_point"));
        CHECK(str_is(&o, "label", nsum ? "tiny/moe-e8k2" : "tiny/dense"));
        double rate = get_d(&o, "rate_rps");
        CHECK(nsum ? rate == 2.5 : isinf(rate) && rate > 0);
        int64_t conc = -1;
        CHECK(mpk_get_int(&o, "concurrency", &conc) && conc == (nsum ? 16 : 0));
        CHECK(get_u(&o, "completed") == p->completed);
        CHECK(get_d(&o, "duration_s") == p->duration_s);
        CHECK(get_d(&o, "requests_per_s") == p->request_throughput);
        CHECK(get_d(&o, "output_tokens_per_s") == p->output_throughput);
        CHECK(get_d(&o, "total_tokens_per_s") == p->total_throughput);
        CHECK(get_u(&o, "prompt_tokens") == p->total_prompt_tokens);
        CHECK(get_u(&o, "output_tokens") == p->total_output_tokens);
        CHECK(get_d(&o, "ttft_ms_p90") == p->ttft.p90 * 1e3);
        CHECK(get_d(&o, "tpot_ms_mean") == p->tpot.mean * 1e3);
        CHECK(get_d(&o, "itl_ms_median") == p->itl.median * 1e3);
        CHECK(get_d(&o, "e2e_ms_p99") == p->e2e.p99 * 1e3);
        nsum++;
    }
    CHECK(nreq == 4 && nsum == 2);
    CHECK_NEAR(s[0].e2e.p99 * 1e3, 1977.5, 1e-9);
    mpk_reader_close(&r);
    free(path);
    printf("records: 4 request, 2 sweep_point\n");
}

static void test_table(void)
{
    serve_summary s[2];
    serve_summarize(timeline, 4, 10.0, &s[0]);
    serve_summarize(&timeline[1], 1, 10.25, &s[1]);
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    const char *const labels[] = {"tiny/dense rate=inf", "one-token"};
    serve_print_table(fp, s, 2, labels);
    fclose(fp);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    CHECK_MSG(lines == 4, "table: %zu lines, want 2 header + 2 rows:\n%s", lines, text);
    const char *row = strstr(text, "tiny/dense rate=inf");
    /* 4 done, 2.50 s, 1.60 req/s, 4.0 / 12.0 tok/s, TTFT 562.50 500.00 985.00,
     * TPOT 291.67 250.00 495.00, ITL 312.50 250.00 731.25, E2E 1031.25 875.00 1977.50 */
    CHECK_MSG(row && strstr(row, " 4 ") && strstr(row, "2.50") && strstr(row, "1.60") && strstr(row, "12.0") &&
                  strstr(row, "562.50") && strstr(row, "291.67") && strstr(row, "731.25") && strstr(row, "1977.50"),
              "table row wrong:\n%s", text);
    CHECK(strstr(text, "one-token") && strstr(text, "TTFT ms") && strstr(text, "E2E ms"));
    free(text);

    fp = open_memstream(&text, &len);
    serve_print_table(fp, s, 1, NULL);
    fclose(fp);
    CHECK_MSG(strstr(text, "\n0 ") != NULL, "unlabelled rows are numbered:\n%s", text);
    fputs(text, stdout);
    free(text);
}

int main(int argc, char **argv)
{
    upc_init("test_loadgen");
    if (argc != 2) {
        fprintf(stderr, "usage: test_loadgen SCRATCH_DIR\n");
        return EX_USAGE;
    }
    scratch = argv[1];
    test_bad_spec();
    test_len_spec();
    test_determinism();
    test_arrivals();
    test_lengths();
    test_percentile();
    test_summary();
    test_records();
    test_table();
    printf("%d checks, %d failed\n", checks, failures);
    if (failures)
        return 1;
    printf("test_loadgen: all checks passed\n");
    return 0;
}
