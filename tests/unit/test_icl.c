/* test_icl: the in-context-learning task layer (lib/icl.h): Foundry's JSONL
 * task types, few-shot prompt assembly byte for byte, few-shot sampling,
 * answer normalisation and matching, suite and gauntlet YAML, gauntlet
 * arithmetic, and bad input.
 *
 *   test_icl FIXTURE_DIR SCRATCH_DIR   all checks; exit 1 on a failure
 *
 * Expected prompts are written out by hand from Foundry's rules
 * (llmfoundry/eval/datasets/in_context_learning_evaluation.py). Bad input
 * runs in a child (EXPECT_FAIL): exit 65 (66 for a missing file) with one
 * line naming the file, line and field. */
#include "icl.h"
#include "test_harness.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *fixtures, *scratch;

static char *fixture(const char *name)
{
    return upc_path_join(fixtures, name);
}

/* Writes text to SCRATCH/name; returns the path. */
static char *scratch_file(const char *name, const char *text)
{
    char *p = upc_path_join(scratch, name);
    FILE *fp = fopen(p, "wb");
    if (!fp || fwrite(text, 1, strlen(text), fp) != strlen(text) || fclose(fp) != 0)
        upc_fail(EX_CANTCREAT, "%s: cannot write", p);
    return p;
}

#define CHECK_STR(got, want)                                                                     \
    do {                                                                                         \
        const char *g_ = (got), *w_ = (want);                                                    \
        CHECK_MSG(g_ && strcmp(g_, w_) == 0, "%s:\n  got  [%s]\n  want [%s]", #got, g_ ? g_ : "(null)", w_); \
    } while (0)

static icl_prompt_opts opts(int shots, uint64_t seed)
{
    icl_prompt_opts o = {0};
    o.num_fewshot = shots;
    o.seed = seed;
    return o;
}

/* ---- parsing the four types ---- */

static void test_parse_types(void)
{
    icl_dataset d;
    char *p = fixture("lm.jsonl");
    icl_dataset_load(&d, p, ICL_LANGUAGE_MODELING);
    CHECK(d.n == 3);
    CHECK_STR(d.items[0].context, "The cat sat on the");
    CHECK_STR(d.items[0].continuation, "mat");
    CHECK_STR(d.items[1].context, "Paris is in");         /* strip_data */
    CHECK_STR(d.items[1].continuation, "France");
    CHECK(d.items[1].line == 3);                          /* the blank line is skipped but counted */
    CHECK(d.items[2].line == 4);
    icl_dataset_free(&d);
    free(p);

    p = fixture("mc.jsonl");
    icl_dataset_load(&d, p, ICL_MULTIPLE_CHOICE);
    CHECK(d.n == 3);
    CHECK_STR(d.items[0].context, "Sky color?");
    CHECK(d.items[0].n_choices == 3);
    CHECK_STR(d.items[0].choices[2], " red");             /* list elements are not stripped */
    CHECK(d.items[1].gold == 1);
    CHECK(d.items[2].n_choices == 4 && d.items[2].gold == 0);
    icl_dataset_free(&d);
    free(p);

    p = fixture("schema.jsonl");
    icl_dataset_load(&d, p, ICL_SCHEMA);
    CHECK(d.n == 3);
    CHECK(d.items[0].n_choices == 2);
    CHECK_STR(d.items[0].choices[1], "The trophy didn't fit because the suitcase");
    CHECK_STR(d.items[0].continuation, "was too big.");
    CHECK(d.items[1].gold == 1 && d.items[2].gold == 2);
    icl_dataset_free(&d);
    free(p);

    p = fixture("gen.jsonl");
    icl_dataset_load(&d, p, ICL_GENERATION);
    CHECK(d.n == 3);
    CHECK_STR(d.items[0].answer, "Paris");
    CHECK(d.items[0].n_aliases == 2);
    CHECK_STR(d.items[0].aliases[1], "paris, France");
    CHECK(d.items[1].n_aliases == 0);
    CHECK_STR(d.items[2].context, "Q: Author of Hamlet?");
    icl_dataset_free(&d);
    free(p);

    icl_type t;
    CHECK(icl_type_parse("language_modeling", &t) && t == ICL_LANGUAGE_MODELING);
    CHECK(icl_type_parse("multiple_choice", &t) && t == ICL_MULTIPLE_CHOICE);
    CHECK(icl_type_parse("schema", &t) && t == ICL_SCHEMA);
    CHECK(icl_type_parse("generation_task_with_answers", &t) && t == ICL_GENERATION);
    CHECK(icl_type_parse("question_answering", &t) && t == ICL_GENERATION);
    CHECK(!icl_type_parse("code_evaluation", &t));
    CHECK_STR(icl_type_name(ICL_GENERATION), "generation_task_with_answers");
    CHECK_STR(icl_type_name(ICL_SCHEMA), "schema");
}

/* ---- prompt assembly, byte for byte ---- */

static void test_lm_prompts(void)
{
    icl_dataset d;
    char *p = fixture("lm.jsonl");
    icl_dataset_load(&d, p, ICL_LANGUAGE_MODELING);
    icl_query q;

    /* 0-shot, Foundry defaults: CD " " is rstripped away, the continuation
     * gets its prefix space. */
    icl_prompt_opts o = opts(0, 1234);
    icl_build_query(&d, 1, &o, &q);
    CHECK(q.n == 1 && q.gold == 0 && q.n_answers == 0 && q.n_fewshot == 0);
    CHECK_STR(q.cands[0].context, "Paris is in");
    CHECK_STR(q.cands[0].continuation, " France");
    CHECK(q.preamble_len == 0);
    icl_query_free(&q);

    /* 0-shot with a prompt string: the example delimiter follows it. */
    o.prompt_string = "Complete:";
    o.continuation_delimiter = "\nAnswer: ";
    icl_build_query(&d, 1, &o, &q);
    CHECK_STR(q.cands[0].context, "Complete:\nParis is in\nAnswer:");
    CHECK_STR(q.cands[0].continuation, " France");
    CHECK(q.preamble_len == strlen("Complete:"));
    icl_query_free(&q);

    /* 2-shot of 3 items: the two others, in index order. */
    o = opts(2, 1234);
    icl_build_query(&d, 1, &o, &q);
    CHECK(q.n_fewshot == 2 && q.fewshot[0] == 0 && q.fewshot[1] == 2);
    CHECK_STR(q.cands[0].context, "The cat sat on the mat\nTwo plus two is four\nParis is in");
    CHECK_STR(q.cands[0].continuation, " France");
    CHECK(q.preamble_len == strlen("The cat sat on the mat\nTwo plus two is four"));
    icl_query_free(&q);

    /* 2-shot, custom everything. */
    o.prompt_string = "Fill in:";
    o.continuation_delimiter = " =>";
    o.example_delimiter = "\n\n";
    o.prelimiter = "Q: ";
    icl_build_query(&d, 1, &o, &q);
    CHECK_STR(q.cands[0].context, "Fill in:\n\nQ: The cat sat on the =>mat\n\nQ: Two plus two is =>four\n\nQ: Paris is in =>");
    CHECK_STR(q.cands[0].continuation, " France");
    icl_query_free(&q);
    o.no_prefix_space = true;
    icl_build_query(&d, 0, &o, &q);
    CHECK_STR(q.cands[0].context, "Fill in:\n\nQ: Paris is in =>France\n\nQ: Two plus two is =>four\n\nQ: The cat sat on the =>");
    CHECK_STR(q.cands[0].continuation, "mat");
    icl_query_free(&q);

    /* More shots than items: n - 1 of them. */
    o = opts(10, 5);
    icl_build_query(&d, 2, &o, &q);
    CHECK(q.n_fewshot == 2 && q.fewshot[0] == 0 && q.fewshot[1] == 1);
    CHECK_STR(q.cands[0].context, "The cat sat on the mat\nParis is in France\nTwo plus two is");
    icl_query_free(&q);
    icl_dataset_free(&d);
    free(p);
}

static void test_mc_prompts(void)
{
    icl_dataset d;
    char *p = fixture("mc.jsonl");
    icl_dataset_load(&d, p, ICL_MULTIPLE_CHOICE);
    icl_query q;
    icl_prompt_opts o = opts(0, 1);
    icl_build_query(&d, 0, &o, &q);
    CHECK(q.n == 3 && q.gold == 0);
    for (size_t i = 0; i < q.n; i++)
        CHECK_STR(q.cands[i].context, "Sky color?");
    CHECK_STR(q.cands[0].continuation, " blue");
    CHECK_STR(q.cands[1].continuation, " green");
    CHECK_STR(q.cands[2].continuation, " red");           /* already spaced: no second space */
    icl_query_free(&q);

    o = opts(2, 99);
    o.continuation_delimiter = "\nAnswer: ";
    icl_build_query(&d, 1, &o, &q);
    CHECK(q.n == 2 && q.gold == 1);
    const char *want = "Sky color?\nAnswer: blue\nOpposite of hot?\nAnswer: cold\n2+2=\nAnswer:";
    CHECK_STR(q.cands[0].context, want);
    CHECK_STR(q.cands[1].context, want);
    CHECK(q.cands[0].context != q.cands[1].context);     /* each candidate owns its strings */
    CHECK_STR(q.cands[0].continuation, " 3");
    CHECK_STR(q.cands[1].continuation, " 4");
    icl_query_free(&q);
    icl_dataset_free(&d);
    free(p);
}

static void test_schema_prompts(void)
{
    icl_dataset d;
    char *p = fixture("schema.jsonl");
    icl_dataset_load(&d, p, ICL_SCHEMA);
    icl_query q;
    icl_prompt_opts o = opts(0, 1);
    icl_build_query(&d, 0, &o, &q);
    CHECK(q.n == 2 && q.gold == 0);
    CHECK_STR(q.cands[0].context, "The trophy didn't fit because the trophy");
    CHECK_STR(q.cands[1].context, "The trophy didn't fit because the suitcase");
    CHECK_STR(q.cands[0].continuation, " was too big.");
    CHECK_STR(q.cands[1].continuation, " was too big.");
    icl_query_free(&q);

    o = opts(2, 1);
    icl_build_query(&d, 0, &o, &q);
    CHECK_STR(q.cands[0].context,
              "Ann thanked Mary because Mary had helped her.\nC done\nThe trophy didn't fit because the trophy");
    CHECK_STR(q.cands[1].context,
              "Ann thanked Mary because Mary had helped her.\nC done\nThe trophy didn't fit because the suitcase");
    CHECK_STR(q.cands[1].continuation, " was too big.");
    icl_query_free(&q);

    /* A prompt: delimiter and rstripped continuation delimiter around each
     * option; the prelimiter goes before the example delimiter (Foundry). */
    o = opts(0, 1);
    o.prompt_string = "P:";
    o.continuation_delimiter = " -> ";
    icl_build_query(&d, 2, &o, &q);
    CHECK(q.n == 3 && q.gold == 2);
    CHECK_STR(q.cands[0].context, "P:\nA ->");
    CHECK_STR(q.cands[2].context, "P:\nC ->");
    CHECK_STR(q.cands[2].continuation, " done");
    icl_query_free(&q);
    o = opts(2, 1);
    o.prompt_string = "P:";
    o.prelimiter = "Q: ";
    o.continuation_delimiter = " -> ";
    icl_build_query(&d, 2, &o, &q);
    CHECK_STR(q.cands[1].context,
              "P:Q: \nThe trophy didn't fit because the trophy -> was too big."
              "Q: \nAnn thanked Mary because Mary -> had helped her.Q: \nB ->");
    CHECK(q.preamble_len == strlen(q.cands[1].context) - strlen("Q: \nB ->"));
    icl_query_free(&q);
    icl_dataset_free(&d);
    free(p);
}

static void test_generation_prompts(void)
{
    icl_dataset d;
    char *p = fixture("gen.jsonl");
    icl_dataset_load(&d, p, ICL_GENERATION);
    icl_query q;
    icl_prompt_opts o = opts(2, 3);
    o.continuation_delimiter = "\nA:";
    icl_build_query(&d, 2, &o, &q);
    CHECK(q.n == 1);
    CHECK_STR(q.cands[0].context, "Q: Capital of France?\nA:Paris\nQ: Largest planet?\nA:Jupiter\nQ: Author of Hamlet?\nA:");
    CHECK_STR(q.cands[0].continuation, "");
    CHECK(q.n_answers == 2);
    CHECK_STR(q.answers[0], "William Shakespeare");
    CHECK_STR(q.answers[1], "Shakespeare");
    icl_query_free(&q);
    o = opts(0, 3);
    icl_build_query(&d, 0, &o, &q);
    CHECK_STR(q.cands[0].context, "Q: Capital of France?");
    CHECK(q.n_answers == 2);                             /* set([answer] + aliases) */
    CHECK_STR(q.answers[0], "Paris");
    CHECK_STR(q.answers[1], "paris, France");
    icl_query_free(&q);
    icl_dataset_free(&d);
    free(p);
}

/* ---- few-shot sampling ---- */

static void test_fewshot_sampling(void)
{
    /* 40 items whose texts name their index. */
    enum { N = 40, K = 5 };
    char text[N * 64] = "";
    for (int i = 0; i < N; i++) {
        char line[64];
        snprintf(line, sizeof line, "{\"context\": \"c%d\", \"continuation\": \"x%d\"}\n", i, i);
        strcat(text, line);
    }
    char *path = scratch_file("many.jsonl", text);
    icl_dataset d;
    icl_dataset_load(&d, path, ICL_LANGUAGE_MODELING);
    CHECK(d.n == N);
    bool used[N] = {false};
    size_t differ = 0;
    for (size_t i = 0; i < N; i++) {
        icl_prompt_opts o = opts(K, 42);
        icl_query a, b, c;
        icl_build_query(&d, i, &o, &a);
        icl_build_query(&d, i, &o, &b);
        o.seed = 43;
        icl_build_query(&d, i, &o, &c);
        CHECK_MSG(a.n_fewshot == K, "item %zu: %zu few-shot examples", i, a.n_fewshot);
        for (size_t j = 0; j < a.n_fewshot; j++) {
            CHECK_MSG(a.fewshot[j] != i, "item %zu chose itself", i);
            CHECK_MSG(a.fewshot[j] < N, "item %zu: index %zu", i, a.fewshot[j]);
            CHECK_MSG(j == 0 || a.fewshot[j - 1] < a.fewshot[j], "item %zu: not ascending or repeated", i);
            used[a.fewshot[j]] = true;
            char want[32];
            snprintf(want, sizeof want, "c%zu x%zu", a.fewshot[j], a.fewshot[j]);
            CHECK_MSG(strstr(a.cands[0].context, want), "item %zu: [%s] lacks [%s]", i, a.cands[0].context, want);
        }
        char self[32];
        snprintf(self, sizeof self, "c%zu x", i);
        CHECK_MSG(!strstr(a.cands[0].context, self), "item %zu: its own answer is in its prompt", i);
        CHECK_STR(a.cands[0].context, b.cands[0].context);
        if (strcmp(a.cands[0].context, c.cands[0].context) != 0)
            differ++;
        icl_query_free(&a);
        icl_query_free(&b);
        icl_query_free(&c);
    }
    size_t n_used = 0;
    for (int i = 0; i < N; i++)
        n_used += used[i];
    CHECK_MSG(differ >= N - 2, "another seed changed only %zu of %d prompts", differ, N);
    CHECK_MSG(n_used >= N / 2, "the few-shot draws used only %zu of %d items", n_used, N);
    icl_dataset_free(&d);
    free(path);

    /* Two items: the other one, whatever the seed. */
    path = scratch_file("two.jsonl", "{\"context\": \"a\", \"continuation\": \"b\"}\n"
                                     "{\"context\": \"c\", \"continuation\": \"d\"}\n");
    icl_dataset_load(&d, path, ICL_LANGUAGE_MODELING);
    for (uint64_t seed = 0; seed < 50; seed++) {
        icl_prompt_opts o = opts(3, seed);
        icl_query q;
        icl_build_query(&d, 0, &o, &q);
        CHECK(q.n_fewshot == 1 && q.fewshot[0] == 1);
        CHECK_STR(q.cands[0].context, "c d\na");
        icl_query_free(&q);
    }
    icl_dataset_free(&d);
    free(path);
}

/* ---- normalisation and matching ---- */

static void test_normalize(void)
{
    static const char *const cases[][2] = {
        {"The  Quick_Brown fox!", "quick brown fox"},
        {"  An apple, a day... ", "apple day"},
        {"theory anthem", "theory anthem"},
        {"\xe2\x80\x98Hello\xe2\x80\x99 World", "hello world"},         /* ‘Hello’ */
        {"\xc3\x89" "COLE \xc3\x89t\xc3\xa9", "\xc3\xa9" "cole \xc3\xa9t\xc3\xa9"},   /* ÉCOLE Été */
        {"a", ""},
        {"the.an,a", ""},
        {"Tab\tand\nnewline", "tab and newline"},
        {"don't", "don t"},
        {"x\xc2\xa0y", "x y"},                                          /* no-break space */
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *n = icl_normalize_answer(cases[i][0]);
        CHECK_MSG(strcmp(n, cases[i][1]) == 0, "normalize [%s]: got [%s], want [%s]", cases[i][0], n, cases[i][1]);
        free(n);
    }
    char *paris[] = {"Paris"}, *lower[] = {"paris"}, *two[] = {"Marseille", "Paris"}, *ws[] = {"William Shakespeare"},
         *s[] = {"Shakespeare"};
    CHECK(icl_answer_matches("Paris is the capital", paris, 1));
    CHECK(icl_answer_matches("The Paris.", lower, 1));
    CHECK(icl_answer_matches(" paris", two, 2));
    CHECK(!icl_answer_matches("Lyon", two, 2));
    CHECK(!icl_answer_matches("Par", paris, 1));
    CHECK(!icl_answer_matches("William Shakespeare wrote it", s, 1));
    CHECK(icl_answer_matches("william shakespeare wrote it", ws, 1));
    CHECK(!icl_answer_matches("Paris", paris, 0));
    char *stops[] = {"\n\n", "Question:"};
    char *cut = icl_cut_generation("Paris Question: no\n\nmore", stops, 2);
    CHECK_STR(cut, "Paris ");
    free(cut);
    cut = icl_cut_generation("Paris", stops, 2);
    CHECK_STR(cut, "Paris");
    free(cut);
}

/* ---- suites and gauntlets ---- */

static void check_demo_suite(const icl_suite *s)
{
    CHECK(s->n == 4);
    if (s->n != 4)
        return;
    char *lm = fixture("lm.jsonl");
    const icl_task_spec *t = s->tasks;
    CHECK_STR(t[0].label, "lm_demo");
    CHECK_STR(t[0].dataset_uri, lm);
    CHECK(t[0].type == ICL_LANGUAGE_MODELING);
    CHECK(t[0].n_fewshot == 2 && t[0].num_fewshot[0] == 0 && t[0].num_fewshot[1] == 2);
    CHECK_STR(t[0].continuation_delimiter, "\nAnswer: ");
    CHECK(t[0].prompt_string == NULL && t[0].example_delimiter == NULL && t[0].prelimiter == NULL);
    CHECK(t[0].fewshot_random_seed == 1234);
    CHECK(t[1].type == ICL_MULTIPLE_CHOICE && t[1].n_fewshot == 1 && t[1].num_fewshot[0] == 3);
    CHECK_STR(t[1].prompt_string, "Pick one:");
    CHECK_STR(t[1].example_delimiter, "\n\n");
    CHECK(t[2].type == ICL_SCHEMA && t[2].n_fewshot == 1 && t[2].num_fewshot[0] == 1);
    CHECK_STR(t[2].continuation_delimiter, "");          /* quoted empty: not the default */
    CHECK(t[3].type == ICL_GENERATION);
    CHECK_STR(t[3].dataset_uri, "eval/local_data/not_here.jsonl");   /* not beside the YAML: as given */
    CHECK_STR(t[3].prelimiter, "Question: ");
    CHECK(t[3].prompt_string == NULL);                   /* ~ is null */
    CHECK(t[3].n_early_stopping == 2);
    if (t[3].n_early_stopping == 2) {
        CHECK_STR(t[3].early_stopping[0], "\n\n");
        CHECK_STR(t[3].early_stopping[1], "Question:");
    }
    CHECK(t[3].fewshot_random_seed == 7);
    free(lm);
}

static void test_suite(void)
{
    icl_suite s;
    char *p = fixture("tasks.yaml");
    icl_suite_load(&s, p);
    check_demo_suite(&s);
    icl_suite_free(&s);
    free(p);

    p = fixture("eval.yaml");        /* icl_tasks: tasks.yaml */
    icl_suite_load(&s, p);
    check_demo_suite(&s);
    icl_suite_free(&s);
    free(p);

    p = fixture("tasks_list.yaml");  /* the list at top level */
    icl_suite_load(&s, p);
    CHECK(s.n == 1 && s.tasks[0].type == ICL_GENERATION && s.tasks[0].n_fewshot == 3 &&
          s.tasks[0].num_fewshot[2] == 2);
    CHECK_STR(s.tasks[0].continuation_delimiter, "\nA:");
    /* The suite drives the dataset and prompt layer end to end. */
    icl_dataset d;
    icl_dataset_load(&d, s.tasks[0].dataset_uri, s.tasks[0].type);
    icl_prompt_opts o = {s.tasks[0].prompt_string, s.tasks[0].continuation_delimiter, s.tasks[0].example_delimiter,
                         s.tasks[0].prelimiter, 2, s.tasks[0].fewshot_random_seed, false};
    icl_query q;
    icl_build_query(&d, 1, &o, &q);
    CHECK_STR(q.cands[0].context, "Q: Capital of France?\nA:Paris\nQ: Author of Hamlet?\nA:William Shakespeare\nQ: Largest planet?\nA:");
    icl_query_free(&q);
    icl_dataset_free(&d);
    icl_suite_free(&s);
    free(p);
}

typedef struct {
    const char *label[4];
    int shots[4];
    double acc[4];
    int n;
} results;

static double lookup(void *ctx, const char *label, int num_fewshot, bool *found)
{
    const results *r = ctx;
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->label[i], label) == 0 && r->shots[i] == num_fewshot) {
            *found = true;
            return r->acc[i];
        }
    *found = false;
    return 0;
}

static bool near(double a, double b)
{
    return fabs(a - b) < 1e-12;
}

static void test_gauntlet(void)
{
    gauntlet g;
    char *p = fixture("gauntlet.yaml");
    gauntlet_load(&g, p);
    CHECK(g.n == 3 && g.subtract_random_baseline && g.rescale_accuracy && strcmp(g.weighting, "EQUAL") == 0);
    CHECK(g.cats[0].n == 2 && near(g.cats[0].benchmarks[0].random_baseline, 0.25) &&
          g.cats[0].benchmarks[0].num_fewshot == 3);
    CHECK_STR(g.cats[0].benchmarks[1].name, "lm_demo");
    CHECK(g.n_averages == 1 && strcmp(g.averages[0].name, "core_average") == 0 && g.averages[0].n == 2);

    /* By hand: world_knowledge = mean((0.7-0.25)/0.75, (0.4-0)/1) = mean(0.6, 0.4) = 0.5;
     * reading = (0.8-0.5)/0.5 = 0.6; extra = 0.3; core_average = mean(0.5, 0.6) = 0.55. */
    results r = {{"mc_demo", "lm_demo", "winograd_demo", "qa_demo"}, {3, 0, 1, 0}, {0.7, 0.4, 0.8, 0.3}, 4};
    double cs[3], core;
    gauntlet_score(&g, lookup, &r, cs, &core);
    CHECK_MSG(near(cs[0], 0.5) && near(cs[1], 0.6) && near(cs[2], 0.3), "categories %g %g %g", cs[0], cs[1], cs[2]);
    CHECK_MSG(near(core, 0.55), "core %g", core);

    /* A missing benchmark removes its category (Foundry). */
    r.n = 3;   /* no qa_demo */
    gauntlet_score(&g, lookup, &r, cs, &core);
    CHECK(isnan(cs[2]) && near(cs[0], 0.5) && near(core, 0.55));
    r.shots[1] = 5;   /* lm_demo/0-shot missing: world_knowledge goes */
    gauntlet_score(&g, lookup, &r, cs, &core);
    CHECK_MSG(isnan(cs[0]) && near(cs[1], 0.6) && near(core, 0.6), "cats %g %g core %g", cs[0], cs[1], core);
    r.n = 0;
    gauntlet_score(&g, lookup, &r, cs, &core);
    CHECK(isnan(cs[0]) && isnan(cs[1]) && isnan(cs[2]) && core == 0);

    /* Subtracting without rescaling: mean(0.45, 0.4) = 0.425. */
    g.rescale_accuracy = false;
    results r2 = {{"mc_demo", "lm_demo", "winograd_demo", "qa_demo"}, {3, 0, 1, 0}, {0.7, 0.4, 0.8, 0.3}, 4};
    gauntlet_score(&g, lookup, &r2, cs, &core);
    CHECK_MSG(near(cs[0], 0.425) && near(cs[1], 0.3) && near(core, 0.3625), "cats %g %g core %g", cs[0], cs[1], core);
    gauntlet_free(&g);
    free(p);

    /* No averages: default_average over every category; raw accuracies. */
    p = fixture("gauntlet_raw.yaml");
    gauntlet_load(&g, p);
    CHECK(g.n == 2 && !g.subtract_random_baseline && !g.rescale_accuracy);
    CHECK(g.n_averages == 1 && strcmp(g.averages[0].name, "default_average") == 0 && g.averages[0].n == 2);
    CHECK(near(g.cats[1].benchmarks[0].random_baseline, 0.5));
    gauntlet_score(&g, lookup, &r2, cs, &core);
    CHECK_MSG(near(cs[0], 0.55) && near(cs[1], 0.8) && near(core, 0.675), "cats %g %g core %g", cs[0], cs[1], core);
    double avg[1];
    gauntlet_averages(&g, cs, avg);
    CHECK(near(avg[0], 0.675));
    gauntlet_free(&g);
    free(p);

    p = fixture("eval.yaml");        /* eval_gauntlet: gauntlet.yaml */
    gauntlet_load(&g, p);
    CHECK(g.n == 3 && g.n_averages == 1);
    gauntlet_free(&g);
    free(p);
}

/* ---- bad input ---- */

typedef struct {
    const char *path;
    icl_type type;
} load_arg;

static void load_dataset_fn(const void *arg)
{
    const load_arg *a = arg;
    icl_dataset d;
    icl_dataset_load(&d, a->path, a->type);
    icl_dataset_free(&d);
}

static void load_suite_fn(const void *arg)
{
    icl_suite s;
    icl_suite_load(&s, arg);
    icl_suite_free(&s);
}

static void load_gauntlet_fn(const void *arg)
{
    gauntlet g;
    gauntlet_load(&g, arg);
    gauntlet_free(&g);
}

static void expect_bad_jsonl(int line, const char *name, const char *text, icl_type type, const char *where,
                             const char *what)
{
    char *path = scratch_file(name, text);
    load_arg a = {path, type};
    char place[256];
    snprintf(place, sizeof place, "%s%s", path, where);
    expect_fail_fn(line, load_dataset_fn, &a, EX_DATAERR, (const char *const[]){place, what, NULL});
    free(path);
}

static void test_bad_jsonl(void)
{
    const char *ok = "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%s{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0\n", ok);
    expect_bad_jsonl(__LINE__, "malformed.jsonl", buf, ICL_MULTIPLE_CHOICE, ":2:", "malformed JSON");
    expect_bad_jsonl(__LINE__, "gold.jsonl",
                     "{\"query\": \"q\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"gold\": 4}\n",
                     ICL_MULTIPLE_CHOICE, ":1:", "field \"gold\": 4 is out of range for 4 choices");
    expect_bad_jsonl(__LINE__, "gold_neg.jsonl", "{\"context_options\": [\"a\"], \"continuation\": \"c\", \"gold\": -1}\n",
                     ICL_SCHEMA, ":1:", "field \"gold\": -1 is out of range for 1 context options");
    snprintf(buf, sizeof buf, "%s\n%s{\"query\": \"q\", \"choices\": [], \"gold\": 0}\n", ok, ok);
    expect_bad_jsonl(__LINE__, "empty_choices.jsonl", buf, ICL_MULTIPLE_CHOICE, ":4:", "field \"choices\": empty list");
    expect_bad_jsonl(__LINE__, "missing.jsonl", "{\"choices\": [\"a\"], \"gold\": 0}\n", ICL_MULTIPLE_CHOICE, ":1:",
                     "missing field \"query\"");
    expect_bad_jsonl(__LINE__, "missing_cont.jsonl", "{\"context\": \"c\"}\n", ICL_LANGUAGE_MODELING, ":1:",
                     "missing field \"continuation\"");
    expect_bad_jsonl(__LINE__, "type_gold.jsonl", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": \"0\"}\n",
                     ICL_MULTIPLE_CHOICE, ":1:", "field \"gold\": expected an integer, got a string");
    expect_bad_jsonl(__LINE__, "type_ctx.jsonl", "{\"context\": 3, \"answer\": \"a\"}\n", ICL_GENERATION, ":1:",
                     "field \"context\": expected a string, got an integer");
    expect_bad_jsonl(__LINE__, "type_choice.jsonl", "{\"query\": \"q\", \"choices\": [\"a\", 2], \"gold\": 0}\n",
                     ICL_MULTIPLE_CHOICE, ":1:", "field \"choices\"[1]: expected a string");
    expect_bad_jsonl(__LINE__, "type_aliases.jsonl", "{\"context\": \"c\", \"answer\": \"a\", \"aliases\": \"b\"}\n",
                     ICL_GENERATION, ":1:", "field \"aliases\": expected a list of strings, got a string");
    expect_bad_jsonl(__LINE__, "array.jsonl", "[1, 2]\n", ICL_LANGUAGE_MODELING, ":1:", "expected a JSON object");
    expect_bad_jsonl(__LINE__, "empty.jsonl", "", ICL_SCHEMA, ":", "empty file");
    expect_bad_jsonl(__LINE__, "blank.jsonl", "\n  \n\n", ICL_SCHEMA, ":", "empty file");

    char *missing = upc_path_join(scratch, "no_such.jsonl");
    load_arg a = {missing, ICL_LANGUAGE_MODELING};
    EXPECT_FAIL(load_dataset_fn, &a, EX_NOINPUT, missing, "cannot open");
    free(missing);
}

static void expect_bad_yaml(int line, void (*fn)(const void *), const char *name, const char *text,
                            const char *where, const char *what)
{
    char *path = scratch_file(name, text);
    char place[256];
    snprintf(place, sizeof place, "%s%s", path, where);
    expect_fail_fn(line, fn, path, EX_DATAERR, (const char *const[]){place, what, NULL});
    free(path);
}

static void test_bad_yaml(void)
{
    expect_bad_yaml(__LINE__, load_suite_fn, "syntax.yaml",
                    "icl_tasks:\n- label: a\n  dataset_uri: a.jsonl\n  num_fewshot: [0\n  icl_task_type: schema\n",
                    ":5:", "YAML syntax error");
    expect_bad_yaml(__LINE__, load_suite_fn, "syntax2.yaml", "icl_tasks:\n- label: a\n  dataset_uri: x: y\n", ":3:",
                    "YAML syntax error");
    expect_bad_yaml(__LINE__, load_suite_fn, "empty.yaml", "", ":", "empty file");
    expect_bad_yaml(__LINE__, load_suite_fn, "comments.yaml", "# nothing\n", ":", "empty file");
    expect_bad_yaml(__LINE__, load_suite_fn, "nolabel.yaml",
                    "icl_tasks:\n- dataset_uri: a.jsonl\n  num_fewshot: [0]\n  icl_task_type: schema\n", ":2:",
                    "task 1: missing key \"label\"");
    expect_bad_yaml(__LINE__, load_suite_fn, "badtype.yaml",
                    "icl_tasks:\n- label: x\n  dataset_uri: a.jsonl\n  num_fewshot: [0]\n  icl_task_type: code_evaluation\n",
                    ":5:", "unsupported type \"code_evaluation\"");
    expect_bad_yaml(__LINE__, load_suite_fn, "badshots.yaml",
                    "icl_tasks:\n- label: x\n  dataset_uri: a.jsonl\n  num_fewshot: [0, three]\n  icl_task_type: schema\n",
                    ":4:", "key \"num_fewshot\": expected an integer");
    expect_bad_yaml(__LINE__, load_suite_fn, "nolist.yaml", "icl_tasks:\n  label: x\n", ":2:",
                    "key \"icl_tasks\": expected a list, got a mapping");
    expect_bad_yaml(__LINE__, load_suite_fn, "notasks.yaml", "models: []\n", ":1:", "missing key \"icl_tasks\"");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_rescale.yaml",
                    "eval_gauntlet:\n  subtract_random_baseline: false\n  categories: []\n", ":2:",
                    "rescale_accuracy is only allowed with subtract_random_baseline");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_weight.yaml",
                    "eval_gauntlet:\n  weighting: SAMPLE_SZ\n  categories: []\n", ":2:", "\"SAMPLE_SZ\" is not supported");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_base.yaml",
                    "eval_gauntlet:\n  categories:\n  - name: c\n    benchmarks:\n    - name: b\n      num_fewshot: 0\n"
                    "      random_baseline: 1\n",
                    ":7:", "random_baseline");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_nobase.yaml",
                    "eval_gauntlet:\n  categories:\n  - name: c\n    benchmarks:\n    - name: b\n      num_fewshot: 0\n",
                    ":5:", "missing key \"random_baseline\"");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_bool.yaml",
                    "eval_gauntlet:\n  rescale_accuracy: maybe\n  categories: []\n", ":2:", "expected true or false");
    expect_bad_yaml(__LINE__, load_gauntlet_fn, "g_avg.yaml",
                    "eval_gauntlet:\n  averages:\n    c: [c]\n  categories:\n  - name: c\n    benchmarks: []\n", ":3:",
                    "average \"c\" is also a category name");
    char *missing = upc_path_join(scratch, "no_such.yaml");
    EXPECT_FAIL(load_suite_fn, missing, EX_NOINPUT, missing, "cannot open");
    EXPECT_FAIL(load_gauntlet_fn, missing, EX_NOINPUT, missing, "cannot open");
    free(missing);
}

int main(int argc, char **argv)
{
    upc_init("test_icl");
    if (argc != 3)
        upc_usage_fail("usage: test_icl FIXTURE_DIR SCRATCH_DIR");
    fixtures = argv[1];
    scratch = argv[2];
    test_parse_types();
    test_lm_prompts();
    test_mc_prompts();
    test_schema_prompts();
    test_generation_prompts();
    test_fewshot_sampling();
    test_normalize();
    test_suite();
    test_gauntlet();
    test_bad_jsonl();
    test_bad_yaml();
    if (failures) {
        fprintf(stderr, "test_icl: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_icl: all checks passed (%d checks)\n", checks);
    return 0;
}
