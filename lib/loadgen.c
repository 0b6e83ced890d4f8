/* loadgen.c: seeded request workloads for serve-bench (loadgen.h). */
#include "loadgen.h"

#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- random numbers ---- */

/* Uniform in [0, 1): the top 53 bits of a splitmix64 output. */
static double unit_uniform(uint64_t *st)
{
    return (double)(upc_splitmix64(st) >> 11) * 0x1.0p-53;
}

static double std_exponential(uint64_t *st)
{
    return -log1p(-unit_uniform(st));   /* -log(1 - u), 1 - u in (0, 1] */
}

/* One Box-Muller draw; the second variate is dropped so every draw uses
 * exactly two uniforms and no state is kept between calls. */
static double std_normal(uint64_t *st)
{
    double u1 = unit_uniform(st), u2 = unit_uniform(st);
    return sqrt(-2.0 * log1p(-u1)) * cos(2.0 * M_PI * u2);
}

/* Gamma(k, 1) by Marsaglia & Tsang, "A simple method for generating gamma
 * variables" (ACM TOMS 26(3), 2000); k < 1 boosted through Gamma(k + 1). */
static double std_gamma(double k, uint64_t *st)
{
    if (k < 1.0) {
        double g = std_gamma(k + 1.0, st);
        return g * pow(1.0 - unit_uniform(st), 1.0 / k);
    }
    double d = k - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double z = std_normal(st);
        double t = 1.0 + c * z;
        if (t <= 0.0)
            continue;
        double v = t * t * t;
        double u = 1.0 - unit_uniform(st);   /* (0, 1]: log(u) finite */
        double z2 = z * z;
        if (u < 1.0 - 0.0331 * z2 * z2)
            return d * v;
        if (log(u) < 0.5 * z2 + d * (1.0 - v + log(v)))
            return d * v;
    }
}

/* A generator state for one named stream of the seed. */
static uint64_t stream_state(uint64_t seed, uint64_t stream)
{
    uint64_t s = seed ^ (stream * 0xd1b54a32d192ed03ULL);
    return upc_splitmix64(&s);
}

enum { STREAM_ARRIVAL = 1, STREAM_PROMPT_LEN, STREAM_OUTPUT_LEN, STREAM_TOKENS };

/* ---- length specs ---- */

/* A whole decimal integer in [1, LOADGEN_LEN_MAX], digits only. */
static bool parse_count(const char *s, const char *end, double *out)
{
    if (s == end)
        return false;
    unsigned long long v = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
        if (v > LOADGEN_LEN_MAX)
            return false;
    }
    if (v < 1)
        return false;
    *out = (double)v;
    return true;
}

/* A finite decimal number filling [s, end). */
static bool parse_real(const char *s, const char *end, double *out)
{
    if (s == end || end - s > 63)
        return false;
    char buf[64];
    memcpy(buf, s, (size_t)(end - s));
    buf[end - s] = 0;
    if (buf[0] == ' ' || buf[0] == '\t' || buf[0] == '\n')
        return false;
    char *stop;
    errno = 0;
    double v = strtod(buf, &stop);
    if (*stop || errno || !isfinite(v))
        return false;
    *out = v;
    return true;
}

bool len_spec_parse(const char *s, len_spec *out, char *err, size_t errlen)
{
    const char *expect = "expected N, uniform:MIN:MAX or normal:MEAN:STD";
    len_spec r = {0};
    const char *colon = strchr(s, ':');
    if (!colon) {
        r.kind = LEN_FIXED;
        if (!parse_count(s, s + strlen(s), &r.a)) {
            snprintf(err, errlen, "'%s': %s (N a whole number from 1 to %zu)", s, expect, LOADGEN_LEN_MAX);
            return false;
        }
        *out = r;
        return true;
    }
    const char *second = strchr(colon + 1, ':');
    size_t kind_len = (size_t)(colon - s);
    bool uniform = kind_len == 7 && strncmp(s, "uniform", 7) == 0;
    bool normal = kind_len == 6 && strncmp(s, "normal", 6) == 0;
    if ((!uniform && !normal) || !second || strchr(second + 1, ':')) {
        snprintf(err, errlen, "'%s': %s", s, expect);
        return false;
    }
    const char *end = second + 1 + strlen(second + 1);
    if (uniform) {
        r.kind = LEN_UNIFORM;
        if (!parse_count(colon + 1, second, &r.a) || !parse_count(second + 1, end, &r.b) || r.a > r.b) {
            snprintf(err, errlen, "'%s': expected uniform:MIN:MAX, whole numbers with 1 <= MIN <= MAX <= %zu", s,
                     LOADGEN_LEN_MAX);
            return false;
        }
    } else {
        r.kind = LEN_NORMAL;
        if (!parse_real(colon + 1, second, &r.a) || !parse_real(second + 1, end, &r.b) || !(r.a > 0) ||
            r.a > (double)LOADGEN_LEN_MAX || !(r.b >= 0) || r.b > (double)LOADGEN_LEN_MAX) {
            snprintf(err, errlen, "'%s': expected normal:MEAN:STD with 0 < MEAN <= %zu and 0 <= STD <= %zu", s,
                     LOADGEN_LEN_MAX, LOADGEN_LEN_MAX);
            return false;
        }
    }
    *out = r;
    return true;
}

void len_spec_format(const len_spec *s, char *buf, size_t buflen)
{
    switch (s->kind) {
    case LEN_FIXED:
        snprintf(buf, buflen, "%.0f", s->a);
        break;
    case LEN_UNIFORM:
        snprintf(buf, buflen, "uniform:%.0f:%.0f", s->a, s->b);
        break;
    case LEN_NORMAL:
        snprintf(buf, buflen, "normal:%.17g:%.17g", s->a, s->b);
        break;
    }
}

double len_spec_mean(const len_spec *s)
{
    return s->kind == LEN_UNIFORM ? (s->a + s->b) / 2.0 : s->a;
}

static bool len_spec_valid(const len_spec *s)
{
    char buf[128], err[8];
    len_spec back;
    len_spec_format(s, buf, sizeof buf);
    return len_spec_parse(buf, &back, err, sizeof err) && back.kind == s->kind && back.a == s->a && back.b == s->b;
}

static size_t len_sample(const len_spec *s, uint64_t *st)
{
    switch (s->kind) {
    case LEN_FIXED:
        return (size_t)s->a;
    case LEN_UNIFORM: {
        /* multiply-shift of 32 random bits onto [0, span): each value's
         * probability is off by less than 1 / 2^32, negligible */
        uint64_t span = (uint64_t)(s->b - s->a) + 1;
        uint64_t off = ((upc_splitmix64(st) >> 32) * span) >> 32;
        return (size_t)s->a + (size_t)off;
    }
    case LEN_NORMAL: {
        double v = nearbyint(s->a + s->b * std_normal(st));
        if (!(v >= 1.0))
            return 1;
        if (v > (double)LOADGEN_LEN_MAX)
            return LOADGEN_LEN_MAX;
        return (size_t)v;
    }
    }
    return 1;
}

/* ---- workloads ---- */

arrival_kind workload_arrival_kind(const workload_spec *w)
{
    if (!(w->rate > 0) || isinf(w->rate))
        return ARRIVAL_BURST;
    return w->burstiness == 1.0 ? ARRIVAL_POISSON : ARRIVAL_GAMMA;
}

bool workload_spec_check(const workload_spec *w, char *err, size_t errlen)
{
    if (isnan(w->rate)) {
        snprintf(err, errlen, "request rate is NaN: expected requests/s > 0, or inf for all at once");
        return false;
    }
    if (workload_arrival_kind(w) != ARRIVAL_BURST && !(w->burstiness > 0 && isfinite(w->burstiness))) {
        snprintf(err, errlen, "burstiness %g: expected a finite gamma shape > 0 (1 = Poisson)", w->burstiness);
        return false;
    }
    if (w->vocab < 1) {
        snprintf(err, errlen, "vocabulary size 0: expected at least 1 token id");
        return false;
    }
    if (!len_spec_valid(&w->prompt) || !len_spec_valid(&w->output)) {
        snprintf(err, errlen, "invalid prompt or output length spec");
        return false;
    }
    return true;
}

request *workload_make(const workload_spec *w)
{
    char err[256];
    if (!workload_spec_check(w, err, sizeof err))
        upc_fail(EX_USAGE, "workload: %s", err);
    size_t n = w->n_requests;
    if (n == 0)
        return NULL;
    request *r = upc_calloc(n, sizeof *r);
    uint64_t st_arrival = stream_state(w->seed, STREAM_ARRIVAL);
    uint64_t st_prompt = stream_state(w->seed, STREAM_PROMPT_LEN);
    uint64_t st_output = stream_state(w->seed, STREAM_OUTPUT_LEN);
    uint64_t st_tokens = stream_state(w->seed, STREAM_TOKENS);
    arrival_kind kind = workload_arrival_kind(w);
    double t = 0.0;
    for (size_t i = 0; i < n; i++) {
        /* as vLLM: request i is sent, then the interval to request i+1 is drawn */
        r[i].arrival_s = t;
        if (kind == ARRIVAL_POISSON)
            t += std_exponential(&st_arrival) / w->rate;
        else if (kind == ARRIVAL_GAMMA)
            t += std_gamma(w->burstiness, &st_arrival) / (w->rate * w->burstiness);
        r[i].prompt_len = len_sample(&w->prompt, &st_prompt);
        r[i].output_len = len_sample(&w->output, &st_output);
        r[i].prompt = upc_malloc(r[i].prompt_len * sizeof *r[i].prompt);
        for (size_t j = 0; j < r[i].prompt_len; j++)
            r[i].prompt[j] = (uint32_t)(((upc_splitmix64(&st_tokens) >> 32) * w->vocab) >> 32);  /* [0, vocab) */
    }
    return r;
}

void workload_free(request *r, size_t n)
{
    if (!r)
        return;
    for (size_t i = 0; i < n; i++)
        free(r[i].prompt);
    free(r);
}
