/* serve_metrics.c: vLLM-style serving metrics, records and table
 * (serve_metrics.h). */
#include "serve_metrics.h"

#include "mpk.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double request_ttft(const request_timing *r)
{
    return r->first_token_s - r->arrival_s;
}

double request_e2e(const request_timing *r)
{
    return r->finish_s - r->arrival_s;
}

double request_tpot(const request_timing *r)
{
    if (r->output_len <= 1)
        return 0.0;
    return (request_e2e(r) - request_ttft(r)) / (double)(r->output_len - 1);
}

double request_itl_mean(const request_timing *r)
{
    if (r->n_tokens < 2)
        return 0.0;
    double sum = 0.0;
    for (size_t j = 1; j < r->n_tokens; j++)
        sum += r->token_s[j] - r->token_s[j - 1];
    return sum / (double)(r->n_tokens - 1);
}

double percentile(const double *sorted, size_t n, double p)
{
    if (n == 0)
        return NAN;
    double virt = (double)(n - 1) * (p / 100.0);
    if (!(virt > 0))
        return sorted[0];
    if (virt >= (double)(n - 1))
        return sorted[n - 1];
    size_t lo = (size_t)floor(virt);
    double t = virt - (double)lo;
    double a = sorted[lo], b = sorted[lo + 1], diff = b - a;
    return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

void dist_stats_of(double *values, size_t n, dist_stats *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return;
    qsort(values, n, sizeof *values, cmp_double);
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += values[i];
    out->mean = sum / (double)n;
    out->median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
    out->p90 = percentile(values, n, 90.0);
    out->p99 = percentile(values, n, 99.0);
    out->min = values[0];
    out->max = values[n - 1];
}

void serve_summarize(const request_timing *r, size_t n, double start_s, serve_summary *out)
{
    memset(out, 0, sizeof *out);
    size_t n_itl = 0;
    for (size_t i = 0; i < n; i++)
        n_itl += r[i].n_tokens > 1 ? r[i].n_tokens - 1 : 0;
    /* one buffer for the four pools; +1 so nothing is a zero-size allocation */
    double *buf = upc_malloc((3 * n + n_itl + 1) * sizeof *buf);
    double *ttft = buf, *e2e = buf + n, *tpot = buf + 2 * n, *itl = buf + 3 * n;
    size_t n_tpot = 0, k = 0;
    double end_s = start_s;
    for (size_t i = 0; i < n; i++) {
        const request_timing *q = &r[i];
        ttft[i] = request_ttft(q);
        e2e[i] = request_e2e(q);
        if (q->output_len > 1)
            tpot[n_tpot++] = request_tpot(q);
        for (size_t j = 1; j < q->n_tokens; j++)
            itl[k++] = q->token_s[j] - q->token_s[j - 1];
        out->total_prompt_tokens += q->prompt_len;
        out->total_output_tokens += q->output_len;
        if (q->finish_s > end_s)
            end_s = q->finish_s;
    }
    out->completed = n;
    out->duration_s = end_s - start_s;
    if (out->duration_s > 0) {
        out->request_throughput = (double)n / out->duration_s;
        out->output_throughput = (double)out->total_output_tokens / out->duration_s;
        out->total_throughput = (double)(out->total_prompt_tokens + out->total_output_tokens) / out->duration_s;
    }
    dist_stats_of(ttft, n, &out->ttft);
    dist_stats_of(e2e, n, &out->e2e);
    dist_stats_of(tpot, n_tpot, &out->tpot);
    dist_stats_of(itl, n_itl, &out->itl);
    free(buf);
}

/* ---- records ---- */

void serve_pack_request(msgpack_packer *pk, const request_timing *r, size_t index, const char *label)
{
    msgpack_pack_map(pk, 10);
    mpk_pack_key_str(pk, "event", "request");
    mpk_pack_key_str(pk, "label", label ? label : "");
    mpk_pack_key_uint(pk, "index", index);
    mpk_pack_key_double(pk, "arrival_s", r->arrival_s);
    mpk_pack_key_uint(pk, "prompt_len", r->prompt_len);
    mpk_pack_key_uint(pk, "output_len", r->output_len);
    mpk_pack_key_double(pk, "ttft_ms", request_ttft(r) * 1e3);
    mpk_pack_key_double(pk, "tpot_ms", request_tpot(r) * 1e3);
    mpk_pack_key_double(pk, "e2e_ms", request_e2e(r) * 1e3);
    mpk_pack_key_double(pk, "itl_ms_mean", request_itl_mean(r) * 1e3);
}

static void pack_dist_ms(msgpack_packer *pk, const char *name, const dist_stats *d)
{
    static const char *const stat[] = {"mean", "median", "p90", "p99"};
    double v[] = {d->mean, d->median, d->p90, d->p99};
    char key[64];
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s_ms_%s", name, stat[i]);
        mpk_pack_key_double(pk, key, v[i] * 1e3);
    }
}

void serve_pack_summary(msgpack_packer *pk, const serve_summary *s, const char *label, double rate,
                        int concurrency)
{
    msgpack_pack_map(pk, 11 + 4 * 4);   /* 11 scalars, 4 stats of 4 distributions */
    mpk_pack_key_str(pk, "event", "sweep_point");
    mpk_pack_key_str(pk, "label", label ? label : "");
    mpk_pack_key_double(pk, "rate_rps", rate > 0 ? rate : INFINITY);
    mpk_pack_key_int(pk, "concurrency", concurrency);
    mpk_pack_key_uint(pk, "completed", s->completed);
    mpk_pack_key_double(pk, "duration_s", s->duration_s);
    mpk_pack_key_double(pk, "requests_per_s", s->request_throughput);
    mpk_pack_key_double(pk, "output_tokens_per_s", s->output_throughput);
    mpk_pack_key_double(pk, "total_tokens_per_s", s->total_throughput);
    mpk_pack_key_uint(pk, "prompt_tokens", s->total_prompt_tokens);
    mpk_pack_key_uint(pk, "output_tokens", s->total_output_tokens);
    pack_dist_ms(pk, "ttft", &s->ttft);
    pack_dist_ms(pk, "tpot", &s->tpot);
    pack_dist_ms(pk, "itl", &s->itl);
    pack_dist_ms(pk, "e2e", &s->e2e);
}

/* ---- table ---- */

void serve_print_table(FILE *fp, const serve_summary *s, size_t n, const char *const *labels)
{
    char idx[32];
    int w = 5;
    for (size_t i = 0; i < n && labels; i++) {
        int len = (int)strlen(labels[i] ? labels[i] : "");
        if (len > w)
            w = len;
    }
    fprintf(fp, "%-*s %5s %8s %8s %10s %10s | %-26s | %-26s | %-26s | %s\n", w, "", "", "", "", "output", "total",
            "TTFT ms", "TPOT ms", "ITL ms", "E2E ms");
    fprintf(fp, "%-*s %5s %8s %8s %10s %10s", w, "label", "done", "dur_s", "req/s", "tok/s", "tok/s");
    for (int g = 0; g < 4; g++)
        fprintf(fp, " | %8s %8s %8s", "mean", "median", "p99");
    fputc('\n', fp);
    for (size_t i = 0; i < n; i++) {
        const serve_summary *p = &s[i];
        const char *label = labels && labels[i] ? labels[i] : NULL;
        if (!label) {
            snprintf(idx, sizeof idx, "%zu", i);
            label = idx;
        }
        fprintf(fp, "%-*s %5zu %8.2f %8.2f %10.1f %10.1f", w, label, p->completed, p->duration_s,
                p->request_throughput, p->output_throughput, p->total_throughput);
        const dist_stats *d[] = {&p->ttft, &p->tpot, &p->itl, &p->e2e};
        for (int g = 0; g < 4; g++)
            fprintf(fp, " | %8.2f %8.2f %8.2f", d[g]->mean * 1e3, d[g]->median * 1e3, d[g]->p99 * 1e3);
        fputc('\n', fp);
    }
}
