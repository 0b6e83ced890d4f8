/* serve_metrics.h: serving-benchmark metrics with vLLM's definitions
 * (benchmarks/benchmark_serving.py calculate_metrics and the request
 * functions of backend_request_func.py), their msgpack records and a table.
 *
 * Per request (all times on one benchmark clock, in seconds):
 *   TTFT = first_token_s - arrival_s
 *   E2E  = finish_s - arrival_s                       (vLLM's "latency")
 *   TPOT = (E2E - TTFT) / (output_len - 1), only for output_len > 1; requests
 *          of one output token add nothing to the TPOT distribution
 *   ITL  = token_s[j] - token_s[j-1] for j >= 1: every gap of every request
 *          goes into one pool (not a per-request mean)
 * Per sweep point (the requests passed in are the completed ones):
 *   duration           = max finish_s - start_s (start: the first arrival)
 *   request_throughput = completed / duration
 *   output_throughput  = sum of output_len / duration
 *   total_throughput   = (sum of prompt_len + sum of output_len) / duration
 *   (0 when duration <= 0)
 * Distributions: mean = plain sum / count; median as numpy.median (the mean
 * of the two middle values for an even count); p90, p99 as numpy.percentile's
 * default "linear" method; an empty distribution (no TPOT when every output is
 * one token) is all zeros, as vLLM's `np.mean(x or 0)`. */
#ifndef UPCYC_SERVE_METRICS_H
#define UPCYC_SERVE_METRICS_H

#include <msgpack.h>
#include <stddef.h>
#include <stdio.h>

typedef struct {
    double arrival_s, first_token_s, finish_s;  /* absolute times on the benchmark clock */
    size_t prompt_len, output_len;
    double *token_s; size_t n_tokens;           /* time of every output token (token_s[0] == first_token_s) */
} request_timing;

typedef struct { double mean, median, p90, p99, min, max; } dist_stats;

typedef struct {
    size_t completed; double duration_s;
    double request_throughput, output_throughput, total_throughput;  /* per second */
    dist_stats ttft, tpot, itl, e2e;          /* seconds */
    size_t total_prompt_tokens, total_output_tokens;
} serve_summary;

void serve_summarize(const request_timing *r, size_t n, double start_s, serve_summary *out);

/* numpy.percentile(x, p) with the default linear method, x sorted
 * ascending: i = (n - 1) p / 100, lo = floor(i), result
 * x[lo] + (x[lo+1] - x[lo]) (i - lo), written as numpy's _lerp does
 * (from the upper end when i - lo >= 0.5). p in [0, 100]; NaN when n is 0. */
double percentile(const double *sorted, size_t n, double p);
/* Statistics of n values (sorted in place). All zeros when n is 0. */
void dist_stats_of(double *values, size_t n, dist_stats *out);

/* Per-request values as in the "request" record (seconds); tpot is 0 when
 * output_len <= 1 (vLLM's goodput rule), the ITL mean 0 with no gaps. */
double request_ttft(const request_timing *r);
double request_e2e(const request_timing *r);
double request_tpot(const request_timing *r);
double request_itl_mean(const request_timing *r);

/* One map per call, keys always in this order (values in ms where named):
 *   request:     event "request", label, index, arrival_s, prompt_len,
 *                output_len, ttft_ms, tpot_ms, e2e_ms, itl_ms_mean
 *   sweep_point: event "sweep_point", label, rate_rps (float64; +inf for
 *                burst arrivals, the closed loop's too), concurrency (0 = open
 *                loop), completed, duration_s, requests_per_s,
 *                output_tokens_per_s, total_tokens_per_s, prompt_tokens,
 *                output_tokens, then for each of ttft, tpot, itl, e2e:
 *                NAME_ms_mean, NAME_ms_median, NAME_ms_p90, NAME_ms_p99.
 * arrival_s is written as given (the benchmark clock). A rate <= 0 is
 * written as +inf (the burst it means to workload_make). */
void serve_pack_request(msgpack_packer *pk, const request_timing *r, size_t index, const char *label);
void serve_pack_summary(msgpack_packer *pk, const serve_summary *s, const char *label, double rate,
                        int concurrency);

/* A table for humans: a header, then one row per sweep point s[0..n-1]
 * labelled labels[i] (or its index when labels is NULL): completed,
 * duration, req/s, output and total tok/s, and mean/median/p99 of TTFT,
 * TPOT, ITL and E2E in ms. */
void serve_print_table(FILE *fp, const serve_summary *s, size_t n, const char *const *labels);

#endif
