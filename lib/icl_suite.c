/* icl_suite.c: LLM Foundry's suite YAML (icl_tasks) and Eval Gauntlet YAML,
 * read with libyaml's document API, and the gauntlet aggregation (see icl.h
 * for the rules). */
#include "icl.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

/* A loaded YAML file: the document and its path, for messages. */
typedef struct {
    const char *path;
    yaml_document_t doc;
} ydoc;

static void ydoc_load(ydoc *y, const char *path, const char *what)
{
    y->path = path;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        upc_fail(EX_NOINPUT, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        upc_fail(EX_SOFTWARE, "%s: cannot initialise the YAML parser", path);
    yaml_parser_set_input_file(&parser, fp);
    if (!yaml_parser_load(&parser, &y->doc)) {
        const yaml_mark_t *m = parser.problem_mark.line || parser.problem_mark.column ? &parser.problem_mark
                                                                                      : &parser.context_mark;
        char ctx[256] = "";
        if (parser.context)
            snprintf(ctx, sizeof ctx, " %s started at line %zu", parser.context, parser.context_mark.line + 1);
        upc_fail(EX_DATAERR, "%s:%zu: YAML syntax error: %s%s", path, m->line + 1,
                 parser.problem ? parser.problem : "unknown problem", ctx);
    }
    yaml_parser_delete(&parser);
    fclose(fp);
    if (!yaml_document_get_root_node(&y->doc))
        upc_fail(EX_DATAERR, "%s: empty file, expected %s", path, what);
}

static void ydoc_free(ydoc *y)
{
    yaml_document_delete(&y->doc);
}

static yaml_node_t *ynode(ydoc *y, int index)
{
    return yaml_document_get_node(&y->doc, index);
}

static size_t yline(const yaml_node_t *n)
{
    return n->start_mark.line + 1;
}

static const char *ykind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE: return "a scalar";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "nothing";
    }
}

static const char *yscalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A plain null, ~ or empty value: YAML's null, which counts as absent. */
static bool ynull(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = yscalar(n);
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

/* The value under key in a mapping (the last one when repeated), or NULL
 * when the key is absent or its value is null. */
static yaml_node_t *yget(ydoc *y, const yaml_node_t *map, const char *key)
{
    yaml_node_t *found = NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = ynode(y, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp(yscalar(k), key) == 0)
            found = ynode(y, p->value);
    }
    return found && !ynull(found) ? found : NULL;
}

static void need_mapping(ydoc *y, const yaml_node_t *n, const char *what)
{
    if (n->type != YAML_MAPPING_NODE)
        upc_fail(EX_DATAERR, "%s:%zu: %s: expected a mapping, got %s", y->path, yline(n), what, ykind(n));
}

static yaml_node_t *yneed(ydoc *y, const yaml_node_t *map, const char *key, const char *what)
{
    yaml_node_t *v = yget(y, map, key);
    if (!v)
        upc_fail(EX_DATAERR, "%s:%zu: %s: missing key \"%s\"", y->path, yline(map), what, key);
    return v;
}

static const char *ystring(ydoc *y, const yaml_node_t *n, const char *key, const char *what)
{
    if (n->type != YAML_SCALAR_NODE)
        upc_fail(EX_DATAERR, "%s:%zu: %s: key \"%s\": expected a string, got %s", y->path, yline(n), what, key,
                 ykind(n));
    return yscalar(n);
}

static long long yint(ydoc *y, const yaml_node_t *n, const char *key, const char *what, long long lo,
                      long long hi)
{
    if (n->type == YAML_SCALAR_NODE) {
        const char *s = yscalar(n);
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (*s && !*end && errno == 0 && v >= lo && v <= hi)
            return v;
    }
    upc_fail(EX_DATAERR, "%s:%zu: %s: key \"%s\": expected an integer in [%lld, %lld], got %s%s%s", y->path,
             yline(n), what, key, lo, hi, n->type == YAML_SCALAR_NODE ? "\"" : "",
             n->type == YAML_SCALAR_NODE ? yscalar(n) : ykind(n), n->type == YAML_SCALAR_NODE ? "\"" : "");
}

static double ydouble(ydoc *y, const yaml_node_t *n, const char *key, const char *what)
{
    if (n->type == YAML_SCALAR_NODE) {
        const char *s = yscalar(n);
        char *end;
        double v = strtod(s, &end);
        if (*s && !*end && isfinite(v))
            return v;
    }
    upc_fail(EX_DATAERR, "%s:%zu: %s: key \"%s\": expected a number, got %s%s%s", y->path, yline(n), what, key,
             n->type == YAML_SCALAR_NODE ? "\"" : "", n->type == YAML_SCALAR_NODE ? yscalar(n) : ykind(n),
             n->type == YAML_SCALAR_NODE ? "\"" : "");
}

/* YAML 1.1 booleans, as PyYAML (under OmegaConf) reads them. */
static bool ybool(ydoc *y, const yaml_node_t *n, const char *key, const char *what)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    if (n->type == YAML_SCALAR_NODE)
        for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
            if (strcmp(yscalar(n), yes[i]) == 0)
                return true;
            if (strcmp(yscalar(n), no[i]) == 0)
                return false;
        }
    upc_fail(EX_DATAERR, "%s:%zu: %s: key \"%s\": expected true or false, got %s", y->path, yline(n), what, key,
             n->type == YAML_SCALAR_NODE ? yscalar(n) : ykind(n));
}

static size_t yseq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static yaml_node_t *yseq_at(ydoc *y, const yaml_node_t *n, size_t i)
{
    return ynode(y, n->data.sequence.items.start[i]);
}

static void need_sequence(ydoc *y, const yaml_node_t *n, const char *key, const char *what)
{
    if (n->type != YAML_SEQUENCE_NODE)
        upc_fail(EX_DATAERR, "%s:%zu: %s: key \"%s\": expected a list, got %s", y->path, yline(n), what, key,
                 ykind(n));
}

/* A path named in a YAML file: relative to that file's directory when that
 * file exists, else as given (Foundry resolves against the working
 * directory); absolute paths and URIs (s3://, hf://) as given. */
static char *resolve_path(const char *yaml_path, const char *p)
{
    if (p[0] == '/' || strstr(p, "://"))
        return upc_strdup(p);
    char *dir = upc_dirname(yaml_path);
    char *joined = upc_path_join(dir, p);
    free(dir);
    if (access(joined, F_OK) == 0)
        return joined;
    free(joined);
    return upc_strdup(p);
}

/* ---- icl_tasks ---- */

static char *opt_string(ydoc *y, const yaml_node_t *map, const char *key, const char *what)
{
    yaml_node_t *v = yget(y, map, key);
    return v ? upc_strdup(ystring(y, v, key, what)) : NULL;
}

static void parse_task(ydoc *y, const yaml_node_t *n, size_t index, icl_task_spec *t)
{
    char what[64];
    snprintf(what, sizeof what, "task %zu", index + 1);
    need_mapping(y, n, what);
    memset(t, 0, sizeof *t);
    t->label = upc_strdup(ystring(y, yneed(y, n, "label", what), "label", what));
    snprintf(what, sizeof what, "task \"%.50s\"", t->label);

    const char *uri = ystring(y, yneed(y, n, "dataset_uri", what), "dataset_uri", what);
    t->dataset_uri = resolve_path(y->path, uri);

    yaml_node_t *ty = yneed(y, n, "icl_task_type", what);
    const char *tname = ystring(y, ty, "icl_task_type", what);
    if (!icl_type_parse(tname, &t->type))
        upc_fail(EX_DATAERR,
                 "%s:%zu: %s: key \"icl_task_type\": unsupported type \"%s\", expected language_modeling, "
                 "multiple_choice, schema or generation_task_with_answers",
                 y->path, yline(ty), what, tname);

    yaml_node_t *fs = yneed(y, n, "num_fewshot", what);
    if (fs->type == YAML_SEQUENCE_NODE) {
        t->n_fewshot = yseq_len(fs);
        if (t->n_fewshot == 0)
            upc_fail(EX_DATAERR, "%s:%zu: %s: key \"num_fewshot\": empty list", y->path, yline(fs), what);
        t->num_fewshot = upc_calloc(t->n_fewshot, sizeof *t->num_fewshot);
        for (size_t i = 0; i < t->n_fewshot; i++)
            t->num_fewshot[i] = (int)yint(y, yseq_at(y, fs, i), "num_fewshot", what, 0, 1 << 20);
    } else {
        t->n_fewshot = 1;
        t->num_fewshot = upc_calloc(1, sizeof *t->num_fewshot);
        t->num_fewshot[0] = (int)yint(y, fs, "num_fewshot", what, 0, 1 << 20);
    }

    t->prompt_string = opt_string(y, n, "prompt_string", what);
    t->continuation_delimiter = opt_string(y, n, "continuation_delimiter", what);
    t->example_delimiter = opt_string(y, n, "example_delimiter", what);
    t->prelimiter = opt_string(y, n, "question_prelimiter", what);

    yaml_node_t *seed = yget(y, n, "fewshot_random_seed");
    t->fewshot_random_seed = seed ? (uint64_t)yint(y, seed, "fewshot_random_seed", what, 0, INT64_MAX)
                                  : ICL_DEFAULT_FEWSHOT_SEED;

    yaml_node_t *stop = yget(y, n, "early_stopping_criteria");
    if (stop) {
        need_sequence(y, stop, "early_stopping_criteria", what);
        t->n_early_stopping = yseq_len(stop);
        t->early_stopping = upc_calloc(t->n_early_stopping ? t->n_early_stopping : 1, sizeof *t->early_stopping);
        for (size_t i = 0; i < t->n_early_stopping; i++)
            t->early_stopping[i] =
                upc_strdup(ystring(y, yseq_at(y, stop, i), "early_stopping_criteria", what));
    }
}

static void suite_load_depth(icl_suite *s, const char *yaml_path, int depth)
{
    ydoc y;
    ydoc_load(&y, yaml_path, "icl_tasks: a list of tasks");
    yaml_node_t *root = yaml_document_get_root_node(&y.doc);
    yaml_node_t *list = root;
    if (root->type == YAML_MAPPING_NODE) {
        list = yget(&y, root, "icl_tasks");
        if (!list)
            upc_fail(EX_DATAERR, "%s:%zu: missing key \"icl_tasks\"", yaml_path, yline(root));
        if (list->type == YAML_SCALAR_NODE) {
            /* icl_tasks: PATH, as Foundry's eval configs write it. */
            if (depth >= 8)
                upc_fail(EX_DATAERR, "%s:%zu: icl_tasks files include each other too deeply", yaml_path,
                         yline(list));
            char *inner = resolve_path(yaml_path, yscalar(list));
            ydoc_free(&y);
            suite_load_depth(s, inner, depth + 1);
            free(inner);
            return;
        }
    }
    need_sequence(&y, list, "icl_tasks", "suite");
    s->n = yseq_len(list);
    s->tasks = upc_calloc(s->n ? s->n : 1, sizeof *s->tasks);
    for (size_t i = 0; i < s->n; i++)
        parse_task(&y, yseq_at(&y, list, i), i, &s->tasks[i]);
    ydoc_free(&y);
}

void icl_suite_load(icl_suite *s, const char *yaml_path)
{
    memset(s, 0, sizeof *s);
    suite_load_depth(s, yaml_path, 0);
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void icl_suite_free(icl_suite *s)
{
    for (size_t i = 0; i < s->n; i++) {
        icl_task_spec *t = &s->tasks[i];
        free(t->label);
        free(t->dataset_uri);
        free(t->num_fewshot);
        free(t->prompt_string);
        free(t->continuation_delimiter);
        free(t->example_delimiter);
        free(t->prelimiter);
        free_strings(t->early_stopping, t->n_early_stopping);
    }
    free(s->tasks);
    memset(s, 0, sizeof *s);
}

/* ---- eval_gauntlet ---- */

static void parse_benchmark(ydoc *y, const yaml_node_t *n, const char *cat, gauntlet_benchmark *b, bool rescale)
{
    char what[128];
    snprintf(what, sizeof what, "category \"%.50s\" benchmark", cat);
    need_mapping(y, n, what);
    b->name = upc_strdup(ystring(y, yneed(y, n, "name", what), "name", what));
    snprintf(what, sizeof what, "benchmark \"%.50s\"", b->name);
    b->num_fewshot = (int)yint(y, yneed(y, n, "num_fewshot", what), "num_fewshot", what, 0, 1 << 20);
    yaml_node_t *rb = yneed(y, n, "random_baseline", what);
    b->random_baseline = ydouble(y, rb, "random_baseline", what);
    if (b->random_baseline < 0 || (rescale && b->random_baseline >= 1) || b->random_baseline > 1)
        upc_fail(EX_DATAERR, "%s:%zu: %s: key \"random_baseline\": %g is outside [0, 1)%s", y->path, yline(rb),
                 what, b->random_baseline, rescale ? ", and rescale_accuracy divides by 1 - random_baseline" : "");
}

static void gauntlet_load_depth(gauntlet *g, const char *yaml_path, int depth)
{
    ydoc y;
    ydoc_load(&y, yaml_path, "eval_gauntlet: a mapping");
    yaml_node_t *root = yaml_document_get_root_node(&y.doc);
    need_mapping(&y, root, "gauntlet file");
    yaml_node_t *eg = yget(&y, root, "eval_gauntlet");
    if (!eg && yget(&y, root, "categories"))
        eg = root;   /* the eval_gauntlet mapping on its own */
    if (!eg)
        upc_fail(EX_DATAERR, "%s:%zu: missing key \"eval_gauntlet\"", yaml_path, yline(root));
    if (eg->type == YAML_SCALAR_NODE) {
        if (depth >= 8)
            upc_fail(EX_DATAERR, "%s:%zu: eval_gauntlet files include each other too deeply", yaml_path, yline(eg));
        char *inner = resolve_path(yaml_path, yscalar(eg));
        ydoc_free(&y);
        gauntlet_load_depth(g, inner, depth + 1);
        free(inner);
        return;
    }
    need_mapping(&y, eg, "eval_gauntlet");
    const char *what = "eval_gauntlet";

    /* EvalGauntlet.__init__ defaults and checks. */
    yaml_node_t *v;
    snprintf(g->weighting, sizeof g->weighting, "EQUAL");
    if ((v = yget(&y, eg, "weighting"))) {
        const char *w = ystring(&y, v, "weighting", what);
        if (strcmp(w, "EQUAL") != 0)
            upc_fail(EX_DATAERR,
                     "%s:%zu: %s: key \"weighting\": \"%s\" is not supported, expected EQUAL (SAMPLE_SZ and "
                     "LOG_SAMPLE_SZ need benchmark sizes)",
                     yaml_path, yline(v), what, w);
    }
    g->subtract_random_baseline = (v = yget(&y, eg, "subtract_random_baseline"))
                                      ? ybool(&y, v, "subtract_random_baseline", what)
                                      : true;
    g->rescale_accuracy = (v = yget(&y, eg, "rescale_accuracy")) ? ybool(&y, v, "rescale_accuracy", what) : true;
    if (g->rescale_accuracy && !g->subtract_random_baseline)
        upc_fail(EX_DATAERR,
                 "%s:%zu: %s: rescale_accuracy is only allowed with subtract_random_baseline (as in Foundry)",
                 yaml_path, yline(eg), what);

    yaml_node_t *cats = yneed(&y, eg, "categories", what);
    need_sequence(&y, cats, "categories", what);
    g->n = yseq_len(cats);
    g->cats = upc_calloc(g->n ? g->n : 1, sizeof *g->cats);
    for (size_t i = 0; i < g->n; i++) {
        yaml_node_t *c = yseq_at(&y, cats, i);
        char cwhat[64];
        snprintf(cwhat, sizeof cwhat, "category %zu", i + 1);
        need_mapping(&y, c, cwhat);
        gauntlet_category *gc = &g->cats[i];
        gc->name = upc_strdup(ystring(&y, yneed(&y, c, "name", cwhat), "name", cwhat));
        snprintf(cwhat, sizeof cwhat, "category \"%.50s\"", gc->name);
        yaml_node_t *bs = yneed(&y, c, "benchmarks", cwhat);
        need_sequence(&y, bs, "benchmarks", cwhat);
        gc->n = yseq_len(bs);
        gc->benchmarks = upc_calloc(gc->n ? gc->n : 1, sizeof *gc->benchmarks);
        for (size_t j = 0; j < gc->n; j++)
            parse_benchmark(&y, yseq_at(&y, bs, j), gc->name, &gc->benchmarks[j], g->rescale_accuracy);
    }

    yaml_node_t *avs = yget(&y, eg, "averages");
    if (avs) {
        need_mapping(&y, avs, "eval_gauntlet: key \"averages\"");
        g->n_averages = (size_t)(avs->data.mapping.pairs.top - avs->data.mapping.pairs.start);
        g->averages = upc_calloc(g->n_averages ? g->n_averages : 1, sizeof *g->averages);
        for (size_t i = 0; i < g->n_averages; i++) {
            yaml_node_pair_t *p = &avs->data.mapping.pairs.start[i];
            yaml_node_t *k = ynode(&y, p->key), *l = ynode(&y, p->value);
            gauntlet_average *a = &g->averages[i];
            a->name = upc_strdup(ystring(&y, k, "averages", what));
            for (size_t c = 0; c < g->n; c++)
                if (strcmp(g->cats[c].name, a->name) == 0)
                    upc_fail(EX_DATAERR,
                             "%s:%zu: %s: average \"%s\" is also a category name; they must differ (as in "
                             "Foundry)",
                             yaml_path, yline(k), what, a->name);
            if (ynull(l))
                continue;
            need_sequence(&y, l, a->name, "eval_gauntlet averages");
            a->n = yseq_len(l);
            a->categories = upc_calloc(a->n ? a->n : 1, sizeof *a->categories);
            for (size_t j = 0; j < a->n; j++)
                a->categories[j] = upc_strdup(ystring(&y, yseq_at(&y, l, j), a->name, "eval_gauntlet averages"));
        }
    } else {
        /* No averages: Foundry's single default_average of every category. */
        g->n_averages = 1;
        g->averages = upc_calloc(1, sizeof *g->averages);
        g->averages[0].name = upc_strdup("default_average");
        g->averages[0].n = g->n;
        g->averages[0].categories = upc_calloc(g->n ? g->n : 1, sizeof(char *));
        for (size_t c = 0; c < g->n; c++)
            g->averages[0].categories[c] = upc_strdup(g->cats[c].name);
    }
    ydoc_free(&y);
}

void gauntlet_load(gauntlet *g, const char *yaml_path)
{
    memset(g, 0, sizeof *g);
    gauntlet_load_depth(g, yaml_path, 0);
}

void gauntlet_free(gauntlet *g)
{
    for (size_t i = 0; i < g->n; i++) {
        for (size_t j = 0; j < g->cats[i].n; j++)
            free(g->cats[i].benchmarks[j].name);
        free(g->cats[i].benchmarks);
        free(g->cats[i].name);
    }
    free(g->cats);
    for (size_t i = 0; i < g->n_averages; i++) {
        free(g->averages[i].name);
        free_strings(g->averages[i].categories, g->averages[i].n);
    }
    free(g->averages);
    memset(g, 0, sizeof *g);
}

/* EvalGauntlet.eval_after_all (llmfoundry/callbacks/eval_gauntlet_callback.py),
 * EQUAL weighting: sum(score * 1 / n) over a category's benchmarks. */
void gauntlet_score(const gauntlet *g, gauntlet_lookup acc, void *ctx, double *category_scores,
                    double *core_average)
{
    for (size_t c = 0; c < g->n; c++) {
        const gauntlet_category *gc = &g->cats[c];
        double sum = 0;
        bool missing = false;   /* no benchmarks: an empty sum, 0, as in Foundry */
        for (size_t b = 0; b < gc->n && !missing; b++) {
            const gauntlet_benchmark *bm = &gc->benchmarks[b];
            bool found = false;
            double score = acc(ctx, bm->name, bm->num_fewshot, &found);
            if (!found) {
                missing = true;   /* Foundry drops the whole category */
                break;
            }
            if (g->subtract_random_baseline)
                score -= bm->random_baseline;
            if (g->rescale_accuracy && g->subtract_random_baseline)
                score /= 1.0 - bm->random_baseline;
            sum += score * (1.0 / (double)gc->n);
        }
        category_scores[c] = missing ? NAN : sum;
    }
    double *avgs = upc_calloc(g->n_averages ? g->n_averages : 1, sizeof *avgs);
    gauntlet_averages(g, category_scores, avgs);
    size_t pick = 0;
    for (size_t i = 0; i < g->n_averages; i++)
        if (strcmp(g->averages[i].name, "core_average") == 0)
            pick = i;
    *core_average = g->n_averages ? avgs[pick] : 0;
    free(avgs);
}

/* calculate_named_averages: the categories of the list that have a score, in
 * the gauntlet's order; 0 when none has. */
void gauntlet_averages(const gauntlet *g, const double *category_scores, double *averages)
{
    for (size_t i = 0; i < g->n_averages; i++) {
        const gauntlet_average *a = &g->averages[i];
        double sum = 0;
        size_t n = 0;
        for (size_t c = 0; c < g->n; c++) {
            if (isnan(category_scores[c]))
                continue;
            bool listed = false;
            for (size_t j = 0; j < a->n && !listed; j++)
                listed = strcmp(a->categories[j], g->cats[c].name) == 0;
            if (listed) {
                sum += category_scores[c];
                n++;
            }
        }
        averages[i] = n ? sum / (double)n : 0;
    }
}
