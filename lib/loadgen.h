/* loadgen.h: the requests a serving benchmark sends: when each arrives and
 * what it asks for (prompt tokens, output length). Deterministic in the seed.
 *
 * Arrivals follow vLLM's benchmark_serving.py get_request(): the first request
 * is sent at t = 0, and after each request the next one waits an interval
 *
 *     interval ~ Gamma(shape k, scale theta),  theta = 1 / (rate * k)
 *
 * so the mean interval is k * theta = 1 / rate whatever k, and its
 * coefficient of variation is 1 / sqrt(k): k = 1 is a Poisson process
 * (exponential intervals), k < 1 burstier, k > 1 more regular. A rate <= 0
 * or infinite sends every request at t = 0 (vLLM's request_rate=inf: the
 * maximum-throughput test, and the closed-loop sweeps' queue).
 *
 * Samplers (u: a uniform double in [0, 1) from upc_splitmix64's top 53 bits):
 *   exponential(1):  -log(1 - u)                           (inverse CDF)
 *   normal(0, 1):    sqrt(-2 log(1 - u1)) * cos(2 pi u2)   (Box-Muller)
 *   Gamma(k, 1), k >= 1: Marsaglia & Tsang (2000): d = k - 1/3,
 *                    c = 1 / sqrt(9 d); draw z normal, v = (1 + c z)^3,
 *                    accept d v when v > 0 and log(u) < z^2/2 + d - d v + d log v
 *                    (with the squeeze u < 1 - 0.0331 z^4 first)
 *   Gamma(k, 1), k < 1:  Gamma(k + 1, 1) * (1 - u)^(1/k)
 *   interval = exponential(1) / rate when k == 1, else Gamma(k, 1) / (rate k)
 *
 * Each quantity draws from its own splitmix64 stream, derived from the seed
 * (arrivals, prompt lengths, output lengths, prompt tokens), so with one seed
 * the sweep points of a rate sweep get the same requests with arrival times
 * scaled by 1 / rate, and changing the length spec leaves arrivals alone. */
#ifndef UPCYC_LOADGEN_H
#define UPCYC_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest prompt or output a length spec may ask for (tokens). */
#define LOADGEN_LEN_MAX ((size_t)1 << 24)

/* Token counts:
 *   "N"               always N (1 <= N <= LOADGEN_LEN_MAX)
 *   "uniform:A:B"     an integer uniform in [A, B] inclusive (1 <= A <= B)
 *   "normal:MEAN:STD" round(MEAN + STD z), z standard normal, clipped to
 *                     [1, LOADGEN_LEN_MAX] (MEAN > 0, STD >= 0, both finite)
 * For LEN_FIXED a is N; LEN_UNIFORM a, b are A, B; LEN_NORMAL a, b are MEAN, STD. */
typedef enum { LEN_FIXED, LEN_UNIFORM, LEN_NORMAL } len_dist;
typedef struct {
    len_dist kind;
    double a, b;
} len_spec;

/* Parse s; on failure write one line (no newline) saying what was expected
 * into err and return false. */
bool len_spec_parse(const char *s, len_spec *out, char *err, size_t errlen);
/* Write the spec back in the syntax len_spec_parse reads ("3500",
 * "uniform:100:200", "normal:300:50"). */
void len_spec_format(const len_spec *s, char *buf, size_t buflen);
/* The expected token count before clipping (N, (A + B) / 2, MEAN). */
double len_spec_mean(const len_spec *s);

typedef enum { ARRIVAL_POISSON, ARRIVAL_GAMMA, ARRIVAL_BURST } arrival_kind;

typedef struct {
    size_t n_requests;
    double rate;            /* requests/s (open loop); <= 0 or INFINITY: ARRIVAL_BURST */
    double burstiness;      /* gamma shape k (1 = Poisson), as vLLM's --burstiness */
    len_spec prompt, output;
    uint64_t seed;
    uint32_t vocab;         /* prompt token ids drawn uniformly in [0, vocab) */
} workload_spec;

typedef struct {
    double arrival_s;       /* seconds after the benchmark start */
    uint32_t *prompt;
    size_t prompt_len;
    size_t output_len;
} request;

/* Which process the spec's rate and burstiness give. */
arrival_kind workload_arrival_kind(const workload_spec *w);
/* Check a spec: burstiness finite and > 0 (unless the rate is burst), rate
 * not NaN, vocab >= 1, length specs valid. On failure one line into err. */
bool workload_spec_check(const workload_spec *w, char *err, size_t errlen);

/* n_requests requests, arrival times non-decreasing from 0 (request 0 at
 * exactly 0); deterministic in the seed. Fails with EX_USAGE when
 * workload_spec_check does. Returns NULL when n_requests is 0. */
request *workload_make(const workload_spec *w);
void workload_free(request *r, size_t n);

#endif
