/* test_task_builder: lib/task_builder.h on hand-made documents with known
 * items, a synthetic corpus (determinism, distractor rules, gold index,
 * max_items, length preference), the YAML files read back with libyaml, and
 * bad output directories.
 *   test_task_builder SCRATCH           run every check (SCRATCH: an empty dir)
 *   test_task_builder --fortune FILE DIR  build from a fortune file, print counts
 *   test_task_builder --synthetic DIR     build from the synthetic corpus */
#include "task_builder.h"
#include "test_harness.h"

#include <jansson.h>
#include <math.h>
#include <sys/stat.h>
#include <yaml.h>

static const char *scratch;

/* ---- helpers ---- */

static char *dir_for(const char *name)
{
    char *d = upc_path_join(scratch, name);
    upc_mkdirs(d);
    return d;
}

static char *read_out(const char *dir, const char *name, size_t *len)
{
    char *p = upc_path_join(dir, name);
    char *t = upc_read_file(p, len);
    free(p);
    return t;
}

static tb_doc doc_of(const char *s)
{
    return (tb_doc){s, strlen(s)};
}

static tb_stats build(const tb_doc *docs, size_t n, const tb_options *o, const char *name)
{
    char *d = dir_for(name);
    tb_stats st;
    tb_build(docs, n, o, d, &st);
    free(d);
    return st;
}

static void check_file(const char *dirname, const char *file, const char *want)
{
    char *d = upc_path_join(scratch, dirname);
    size_t len;
    char *got = read_out(d, file, &len);
    CHECK_MSG(len == strlen(want) && memcmp(got, want, len) == 0, "%s/%s:\n got: %s\nwant: %s", dirname, file,
              got, want);
    free(got);
    free(d);
}

static size_t count_lines(const char *t)
{
    size_t n = 0;
    for (; *t; t++)
        n += *t == '\n';
    return n;
}

static bool same_files(const char *a, const char *b, const char *file)
{
    char *da = upc_path_join(scratch, a), *db = upc_path_join(scratch, b);
    size_t la, lb;
    char *ta = read_out(da, file, &la), *tb = read_out(db, file, &lb);
    bool same = la == lb && memcmp(ta, tb, la) == 0;
    free(ta);
    free(tb);
    free(da);
    free(db);
    return same;
}

/* ---- hand-made documents ---- */

static void test_hand_made(void)
{
    tb_options o;
    tb_options_default(&o);

    tb_doc fox = doc_of("  The quick brown fox jumps over the lazy dog near the river bank.  ");
    build(&fox, 1, &o, "fox");
    check_file("fox", "lambada.jsonl",
               "{\"context\":\"The quick brown fox jumps over the lazy dog near the river\","
               "\"continuation\":\" bank\"}\n");

    /* Non-ASCII text unescaped, a newline before the word becomes the space,
     * trailing U+2026 is punctuation. */
    tb_doc cafe = doc_of("Il a dit \xc2\xabjour\xc2\xbb puis il est parti vers le\ncaf\xc3\xa9\xe2\x80\xa6 \n");
    build(&cafe, 1, &o, "cafe");
    check_file("cafe", "lambada.jsonl",
               "{\"context\":\"Il a dit \xc2\xabjour\xc2\xbb puis il est parti vers le\","
               "\"continuation\":\" caf\xc3\xa9\"}\n");

    /* Quotes and tabs escaped as JSON requires, nothing else touched. */
    tb_doc quote = doc_of("She wrote \"stop\"\tand left / the room without a single goodbye!\"");
    build(&quote, 1, &o, "quote");
    check_file("quote", "lambada.jsonl",
               "{\"context\":\"She wrote \\\"stop\\\"\\tand left / the room without a single\","
               "\"continuation\":\" goodbye\"}\n");

    /* Exactly min_context_words before the target: kept; one fewer: not. */
    tb_doc nine[2] = {doc_of("one two three four five six seven eight nine!"),
                      doc_of("one two three four five six seven eight.")};
    tb_stats st = build(nine, 2, &o, "nine");
    CHECK(st.lambada == 1 && st.lambada_eligible == 1);
    check_file("nine", "lambada.jsonl",
               "{\"context\":\"one two three four five six seven eight\",\"continuation\":\" nine\"}\n");

    /* Two 8-word documents: the cut is after word 4 whatever the seed; with 2
     * choices each is the other's distractor. */
    tb_doc pair[2] = {doc_of("alpha beta gamma delta epsilon zeta eta theta"),
                      doc_of("uno dos tres cuatro cinco seis siete ocho")};
    o.choices = 2;
    st = build(pair, 2, &o, "pair");
    CHECK(st.hellaswag == 2 && st.lambada == 0 && st.skipped == 0);
    char *d = upc_path_join(scratch, "pair");
    size_t len;
    char *hs = read_out(d, "hellaswag.jsonl", &len);
    const char *a0 = "{\"query\":\"alpha beta gamma delta\",\"choices\":[\" epsilon zeta eta theta\","
                     "\" cinco seis siete ocho\"],\"gold\":0}\n";
    const char *a1 = "{\"query\":\"alpha beta gamma delta\",\"choices\":[\" cinco seis siete ocho\","
                     "\" epsilon zeta eta theta\"],\"gold\":1}\n";
    const char *b0 = "{\"query\":\"uno dos tres cuatro\",\"choices\":[\" cinco seis siete ocho\","
                     "\" epsilon zeta eta theta\"],\"gold\":0}\n";
    const char *b1 = "{\"query\":\"uno dos tres cuatro\",\"choices\":[\" epsilon zeta eta theta\","
                     "\" cinco seis siete ocho\"],\"gold\":1}\n";
    CHECK_MSG(count_lines(hs) == 2 && (strstr(hs, a0) || strstr(hs, a1)) && (strstr(hs, b0) || strstr(hs, b1)),
              "hellaswag.jsonl: %s", hs);
    free(hs);
    free(d);
    /* One 8-word document has no other ending: no item. */
    st = build(pair, 1, &o, "single");
    CHECK(st.hellaswag == 0 && st.hellaswag_eligible == 1);
    check_file("single", "hellaswag.jsonl", "");
    o.choices = 4;

    /* Eligibility and skip counts. */
    const char *bad1 = "\xff\xfe bad bytes here and there and everywhere again and again";
    const char *bad2 = "overlong \xc0\xaf slash and many more words to make it long enough";
    const char *bad3 = "surrogate \xed\xa0\x80 here and many more words to make it long enough";
    const char *bad4 = "truncated sequence at the very end of a long enough text \xe2\x82";
    tb_doc mix[] = {
        fox,
        doc_of("Too short to count."),
        doc_of(bad1),
        doc_of("one two three four five six seven eight."),   /* HellaSwag only */
        nine[0],
        doc_of("and then he said that he really really didn't."),  /* "t" is not a whole word */
        doc_of(""),
        doc_of("   \n\t "),
        doc_of(bad2),
        doc_of(bad3),
        doc_of(bad4),
        doc_of("!!! ??? ... ,,, ;;; ::: --- ((( )))"),         /* no word at all: HellaSwag only */
        doc_of("a well-known"),
    };
    st = build(mix, sizeof mix / sizeof *mix, &o, "mix");
    CHECK_MSG(st.invalid_utf8 == 4, "invalid_utf8 %zu", st.invalid_utf8);
    CHECK_MSG(st.skipped == 8, "skipped %zu", st.skipped);
    CHECK_MSG(st.lambada_eligible == 2 && st.lambada == 2, "lambada %zu/%zu", st.lambada, st.lambada_eligible);
    CHECK_MSG(st.hellaswag_eligible == 5 && st.hellaswag == 5, "hellaswag %zu/%zu", st.hellaswag,
              st.hellaswag_eligible);
    printf("hand-made: %zu lambada, %zu hellaswag, %zu skipped (%zu not UTF-8)\n", st.lambada, st.hellaswag,
           st.skipped, st.invalid_utf8);

    /* A NUL byte is valid UTF-8 and comes out as \u0000. */
    static const char nul[] = "zero\0byte inside a document that is long enough to end with a word";
    tb_doc z = {nul, sizeof nul - 1};
    build(&z, 1, &o, "nul");
    check_file("nul", "lambada.jsonl",
               "{\"context\":\"zero\\u0000byte inside a document that is long enough to end with a\","
               "\"continuation\":\" word\"}\n");
}

/* ---- synthetic corpus ---- */

#define SYN_DOCS 400
static char *syn_text[SYN_DOCS];
static tb_doc syn[SYN_DOCS];

/* Documents "docI w w ... w endI." with single spaces: a document is found
 * from its query (prefix) and an ending names its document (endI). */
static void make_synthetic(void)
{
    static const char *vocab[] = {"the", "a", "river", "stone", "ran", "quickly", "under", "bright", "sky",
                                  "of", "old", "city", "and", "then", "light", "fell", "on", "water",
                                  "people", "wrote", "letters", "to", "their", "friends", "every", "night"};
    uint64_t rng = 42;
    for (int i = 0; i < SYN_DOCS; i++) {
        size_t words = 3 + upc_splitmix64(&rng) % 120;
        char buf[4096];
        int n = snprintf(buf, sizeof buf, "doc%d", i);
        for (size_t w = 0; w < words; w++)
            n += snprintf(buf + n, sizeof buf - (size_t)n, " %s",
                          vocab[upc_splitmix64(&rng) % (sizeof vocab / sizeof *vocab)]);
        snprintf(buf + n, sizeof buf - (size_t)n, " end%d.", i);
        syn_text[i] = upc_strdup(buf);
        syn[i] = doc_of(syn_text[i]);
    }
}

static int doc_with_prefix(const char *q)
{
    /* "docI " starts every query. */
    int id;
    if (sscanf(q, "doc%d", &id) != 1 || id < 0 || id >= SYN_DOCS)
        return -1;
    return id;
}

static int end_id(const char *ending)
{
    const char *p = strrchr(ending, ' ');
    int id;
    if (!p || sscanf(p, " end%d.", &id) != 1)
        return -1;
    return id;
}

static void test_synthetic(void)
{
    make_synthetic();
    tb_options o;
    tb_options_default(&o);
    o.max_items = 0;
    tb_stats st = build(syn, SYN_DOCS, &o, "syn");
    tb_stats st2 = build(syn, SYN_DOCS, &o, "syn_again");
    o.seed = 99;
    build(syn, SYN_DOCS, &o, "syn_seed99");
    o.seed = 1234;
    printf("synthetic: %zu lambada, %zu hellaswag, %zu skipped\n", st.lambada, st.hellaswag, st.skipped);
    CHECK(st.lambada > 300 && st.hellaswag > 300);
    CHECK(memcmp(&st, &st2, sizeof st) == 0);
    const char *files[] = {"lambada.jsonl", "hellaswag.jsonl", "icl_tasks.yaml", "eval_gauntlet.yaml"};
    for (int f = 0; f < 4; f++)
        CHECK_MSG(same_files("syn", "syn_again", files[f]), "%s differs between two runs with one seed", files[f]);
    CHECK_MSG(!same_files("syn", "syn_seed99", "lambada.jsonl"), "lambada.jsonl the same under another seed");
    CHECK_MSG(!same_files("syn", "syn_seed99", "hellaswag.jsonl"), "hellaswag.jsonl the same under another seed");

    char *d = upc_path_join(scratch, "syn");
    size_t len;
    char *lam = read_out(d, "lambada.jsonl", &len);
    char *hs = read_out(d, "hellaswag.jsonl", &len);
    CHECK(count_lines(lam) == st.lambada && count_lines(hs) == st.hellaswag);

    /* LAMBADA: context + continuation + "." is the document. */
    size_t bad = 0;
    for (char *line = strtok(lam, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        const char *c = json_string_value(json_object_get(j, "context"));
        const char *w = json_string_value(json_object_get(j, "continuation"));
        int id = c ? doc_with_prefix(c) : -1;
        char whole[4200];
        if (id < 0 || !w || w[0] != ' ')
            bad++;
        else {
            snprintf(whole, sizeof whole, "%s%s.", c, w);
            bad += strcmp(whole, syn_text[id]) != 0;
        }
        json_decref(j);
    }
    CHECK_MSG(bad == 0, "%zu LAMBADA items do not rebuild their document", bad);

    /* HellaSwag: gold is the true ending, distractors from other documents,
     * distinct, never the gold; lengths close to the gold's. */
    size_t items = 0, gold_bad = 0, same_doc = 0, dup = 0, shape = 0, gold_pos[4] = {0};
    double diff_sum = 0, rand_sum = 0;
    size_t diff_n = 0, rand_n = 0;
    size_t prev_len = 0;
    for (char *line = strtok(hs, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        const char *q = json_string_value(json_object_get(j, "query"));
        json_t *ch = json_object_get(j, "choices");
        json_t *g = json_object_get(j, "gold");
        items++;
        if (!q || !json_is_array(ch) || json_array_size(ch) != 4 || !json_is_integer(g) ||
            json_integer_value(g) < 0 || json_integer_value(g) >= 4) {
            shape++;
            json_decref(j);
            continue;
        }
        size_t gi = (size_t)json_integer_value(g);
        gold_pos[gi]++;
        int id = doc_with_prefix(q);
        const char *gold = json_string_value(json_array_get(ch, gi));
        char whole[4200];
        snprintf(whole, sizeof whole, "%s%s", q, gold);
        gold_bad += id < 0 || gold[0] != ' ' || strcmp(whole, syn_text[id]) != 0 || end_id(gold) != id;
        for (size_t a = 0; a < 4; a++) {
            const char *ca = json_string_value(json_array_get(ch, a));
            if (a != gi) {
                same_doc += end_id(ca) == id;
                dup += strcmp(ca, gold) == 0;
                diff_sum += fabs((double)strlen(ca) - (double)strlen(gold));
                diff_n++;
            }
            for (size_t b = a + 1; b < 4; b++)
                dup += strcmp(ca, json_string_value(json_array_get(ch, b))) == 0;
        }
        if (prev_len) {
            rand_sum += fabs((double)strlen(gold) - (double)prev_len);
            rand_n++;
        }
        prev_len = strlen(gold);
        json_decref(j);
    }
    CHECK(items == st.hellaswag);
    CHECK_MSG(shape == 0 && gold_bad == 0, "%zu malformed items, %zu golds that are not the true ending", shape,
              gold_bad);
    CHECK_MSG(same_doc == 0 && dup == 0, "%zu distractors from the item's own document, %zu duplicates", same_doc,
              dup);
    /* Neighbours in length order are far closer than two random endings. */
    double mean_diff = diff_sum / (double)diff_n, mean_rand = rand_sum / (double)rand_n;
    CHECK_MSG(mean_diff < 0.2 * mean_rand, "distractor length gap %.1f vs random %.1f", mean_diff, mean_rand);
    /* The gold index is shuffled: every position is used. */
    for (int p = 0; p < 4; p++)
        CHECK_MSG(gold_pos[p] > items / 8, "gold at %d in %zu of %zu items", p, gold_pos[p], items);
    printf("synthetic: distractor length gap %.1f bytes (random pairs %.1f)\n", mean_diff, mean_rand);
    free(lam);
    free(hs);
    free(d);

    /* max_items: exactly that many, the first items of the unlimited run. */
    o.max_items = 7;
    st = build(syn, SYN_DOCS, &o, "syn7");
    CHECK(st.lambada == 7 && st.hellaswag == 7);
    for (int f = 0; f < 2; f++) {
        char *d7 = upc_path_join(scratch, "syn7"), *da = upc_path_join(scratch, "syn");
        size_t l7, la;
        char *t7 = read_out(d7, files[f], &l7), *ta = read_out(da, files[f], &la);
        CHECK_MSG(count_lines(t7) == 7 && l7 <= la && memcmp(t7, ta, l7) == 0,
                  "%s with max_items 7 is not the first 7 items", files[f]);
        free(t7);
        free(ta);
        free(d7);
        free(da);
    }
}

/* Many documents share one ending: it is never offered twice nor as a
 * distractor to an item whose gold it is. */
static void test_duplicate_endings(void)
{
    tb_options o;
    tb_options_default(&o);
    char *texts[40];
    tb_doc docs[40];
    for (int i = 0; i < 40; i++) {
        char buf[256];
        if (i < 36)
            snprintf(buf, sizeof buf, "w%d x%d y%d z%d same ending words here", i, i, i, i);
        else
            snprintf(buf, sizeof buf, "w%d x%d y%d z%d other%d ending words here", i, i, i, i, i);
        texts[i] = upc_strdup(buf);
        docs[i] = doc_of(texts[i]);
    }
    tb_stats st = build(docs, 40, &o, "dups");
    char *d = upc_path_join(scratch, "dups");
    size_t len;
    char *hs = read_out(d, "hellaswag.jsonl", &len);
    size_t bad = 0;
    for (char *line = strtok(hs, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *ch = json_object_get(j, "choices");
        for (size_t a = 0; a < json_array_size(ch); a++)
            for (size_t b = a + 1; b < json_array_size(ch); b++)
                bad += strcmp(json_string_value(json_array_get(ch, a)), json_string_value(json_array_get(ch, b))) == 0;
        json_decref(j);
    }
    /* Each document is cut after word 4 (8 words), so 36 share " same ending
     * words here": they have 4 distinct others to draw from; each of the 4
     * others has 3 like it and that shared ending, which it must offer once. */
    CHECK_MSG(bad == 0 && st.hellaswag == 40, "%zu duplicate choices in %zu items", bad, st.hellaswag);
    free(hs);
    free(d);
    for (int i = 0; i < 40; i++)
        free(texts[i]);

    /* Only duplicates of the gold available: no item rather than a bad one. */
    tb_doc same[5];
    for (int i = 0; i < 5; i++)
        same[i] = doc_of("a b c d same ending words here");
    st = build(same, 5, &o, "all_same");
    CHECK(st.hellaswag == 0 && st.hellaswag_eligible == 5);
}

/* ---- YAML read back with libyaml ---- */

static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

static const char *scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *seq_get(yaml_document_t *doc, yaml_node_t *seq, size_t i)
{
    if (!seq || seq->type != YAML_SEQUENCE_NODE ||
        i >= (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start))
        return NULL;
    return yaml_document_get_node(doc, seq->data.sequence.items.start[i]);
}

static bool load_yaml(const char *path, yaml_document_t *doc)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, fp);
    bool ok = yaml_parser_load(&parser, doc) && yaml_document_get_root_node(doc);
    if (!ok)
        fprintf(stderr, "%s: YAML error: %s at line %zu\n", path, parser.problem ? parser.problem : "?",
                parser.problem_mark.line + 1);
    yaml_parser_delete(&parser);
    fclose(fp);
    return ok;
}

static bool str_is(yaml_node_t *n, const char *want)
{
    const char *s = scalar(n);
    return s && strcmp(s, want) == 0;
}

static void test_yaml(void)
{
    tb_options o;
    tb_options_default(&o);
    o.choices = 5;
    build(syn, SYN_DOCS, &o, "yaml");
    char *d = upc_path_join(scratch, "yaml");
    char *tasks_path = upc_path_join(d, "icl_tasks.yaml"), *gaunt_path = upc_path_join(d, "eval_gauntlet.yaml");

    yaml_document_t doc;
    CHECK_MSG(load_yaml(tasks_path, &doc), "icl_tasks.yaml does not parse");
    yaml_node_t *tasks = map_get(&doc, yaml_document_get_root_node(&doc), "icl_tasks");
    CHECK(seq_get(&doc, tasks, 2) == NULL);
    const char *labels[2] = {"lambada_heldout", "hellaswag_heldout"};
    const char *uris[2] = {"lambada.jsonl", "hellaswag.jsonl"};
    const char *types[2] = {"language_modeling", "multiple_choice"};
    const char *shots[2][3] = {{"0", "3", NULL}, {"0", NULL, NULL}};
    for (size_t t = 0; t < 2; t++) {
        yaml_node_t *task = seq_get(&doc, tasks, t);
        CHECK_MSG(str_is(map_get(&doc, task, "label"), labels[t]), "task %zu label", t);
        CHECK_MSG(str_is(map_get(&doc, task, "icl_task_type"), types[t]), "task %zu type", t);
        CHECK_MSG(str_is(map_get(&doc, task, "dataset_uri"), uris[t]), "task %zu dataset_uri", t);
        const char *uri = scalar(map_get(&doc, task, "dataset_uri"));
        if (uri) {   /* relative to the YAML's directory */
            char *p = upc_path_join(d, uri);
            struct stat sb;
            CHECK_MSG(stat(p, &sb) == 0 && sb.st_size > 0, "%s: missing or empty", p);
            free(p);
        }
        yaml_node_t *fs = map_get(&doc, task, "num_fewshot");
        for (size_t k = 0; k < 3; k++)
            CHECK_MSG(shots[t][k] ? str_is(seq_get(&doc, fs, k), shots[t][k]) : seq_get(&doc, fs, k) == NULL,
                      "task %zu num_fewshot[%zu]", t, k);
        CHECK_MSG(str_is(map_get(&doc, task, "prompt_string"), ""), "task %zu prompt_string", t);
        CHECK_MSG(str_is(map_get(&doc, task, "example_delimiter"), "\n"), "task %zu example_delimiter", t);
        CHECK_MSG(str_is(map_get(&doc, task, "continuation_delimiter"), " "), "task %zu continuation_delimiter", t);
    }
    yaml_document_delete(&doc);

    CHECK_MSG(load_yaml(gaunt_path, &doc), "eval_gauntlet.yaml does not parse");
    yaml_node_t *g = map_get(&doc, yaml_document_get_root_node(&doc), "eval_gauntlet");
    CHECK(str_is(map_get(&doc, g, "weighting"), "EQUAL"));
    CHECK(str_is(map_get(&doc, g, "subtract_random_baseline"), "true"));
    CHECK(str_is(map_get(&doc, g, "rescale_accuracy"), "true"));
    yaml_node_t *cat = seq_get(&doc, map_get(&doc, g, "categories"), 0);
    CHECK(str_is(map_get(&doc, cat, "name"), "language_understanding"));
    CHECK(str_is(seq_get(&doc, map_get(&doc, map_get(&doc, g, "averages"), "core_average"), 0),
                 "language_understanding"));
    yaml_node_t *benches = map_get(&doc, cat, "benchmarks");
    double baselines[2] = {0, 1.0 / 5};
    for (size_t b = 0; b < 2; b++) {
        yaml_node_t *bench = seq_get(&doc, benches, b);
        CHECK_MSG(str_is(map_get(&doc, bench, "name"), labels[b]), "benchmark %zu name", b);
        CHECK_MSG(str_is(map_get(&doc, bench, "num_fewshot"), "0"), "benchmark %zu num_fewshot", b);
        const char *rb = scalar(map_get(&doc, bench, "random_baseline"));
        CHECK_MSG(rb && strtod(rb, NULL) == baselines[b], "benchmark %zu random_baseline %s", b, rb ? rb : "-");
    }
    CHECK(seq_get(&doc, benches, 2) == NULL);
    yaml_document_delete(&doc);
    free(tasks_path);
    free(gaunt_path);
    free(d);
}

/* ---- failures ---- */

static void build_into(const void *dir)
{
    tb_options o;
    tb_options_default(&o);
    tb_build(syn, SYN_DOCS, &o, dir, NULL);
}

static void build_two_choices_minus(const void *dir)
{
    tb_options o;
    tb_options_default(&o);
    o.choices = 1;
    tb_build(syn, SYN_DOCS, &o, dir, NULL);
}

static void test_failures(void)
{
    char *missing = upc_path_join(scratch, "no-such-dir");
    EXPECT_FAIL(build_into, missing, EX_CANTCREAT, "no-such-dir", "No such file");
    char *file = upc_path_join(scratch, "fox/lambada.jsonl");
    EXPECT_FAIL(build_into, file, EX_CANTCREAT, "not a directory");
    EXPECT_FAIL(build_two_choices_minus, scratch, EX_USAGE, "choices");
    free(missing);
    free(file);
}

/* ---- modes for the bats suite ---- */

static int run_fortune(const char *path, const char *out)
{
    size_t len;
    char *text = upc_read_file(path, &len);
    tb_doc *docs = NULL;
    size_t n = 0, cap = 0, start = 0;
    /* Fortunes are separated by lines that are exactly "%". */
    for (size_t i = 0; i <= len; i++) {
        bool eol = i == len || text[i] == '\n';
        if (!eol)
            continue;
        size_t ls = i;
        while (ls > 0 && text[ls - 1] != '\n')
            ls--;
        bool sep = i - ls == 1 && text[ls] == '%';
        if (sep || i == len) {
            size_t end = sep ? ls : len;
            if (end > start) {
                upc_grow((void **)&docs, &cap, n + 1, sizeof *docs);
                docs[n++] = (tb_doc){text + start, end - start};
            }
            start = i + 1;
        }
    }
    tb_options o;
    tb_options_default(&o);
    tb_stats st;
    tb_build(docs, n, &o, out, &st);
    printf("fortune: %zu documents: %zu lambada items (%zu eligible), %zu hellaswag items (%zu eligible), "
           "%zu skipped (%zu not UTF-8)\n",
           n, st.lambada, st.lambada_eligible, st.hellaswag, st.hellaswag_eligible, st.skipped, st.invalid_utf8);
    free(docs);
    free(text);
    return 0;
}

int main(int argc, char **argv)
{
    upc_init("test_task_builder");
    if (argc == 4 && strcmp(argv[1], "--fortune") == 0)
        return run_fortune(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "--synthetic") == 0) {
        make_synthetic();
        tb_options o;
        tb_options_default(&o);
        tb_stats st;
        tb_build(syn, SYN_DOCS, &o, argv[2], &st);
        printf("synthetic: %zu lambada, %zu hellaswag\n", st.lambada, st.hellaswag);
        for (int i = 0; i < SYN_DOCS; i++)
            free(syn_text[i]);
        return 0;
    }
    if (argc != 2)
        upc_fail(EX_USAGE, "usage: test_task_builder SCRATCH | --fortune FILE DIR | --synthetic DIR");
    scratch = argv[1];
    test_hand_made();
    test_synthetic();
    test_duplicate_endings();
    test_yaml();
    test_failures();
    for (int i = 0; i < SYN_DOCS; i++)
        free(syn_text[i]);
    if (failures) {
        printf("test_task_builder: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_task_builder: all checks passed (%d)\n", checks);
    return 0;
}
