/* icl.h: the in-context-learning task layer of `evaluate`, model-free: LLM
 * Foundry's JSONL task formats, few-shot prompt assembly, generation answer
 * matching, Foundry's suite YAML (icl_tasks) and Eval Gauntlet YAML with its
 * aggregation arithmetic.
 *
 * The rules follow MosaicML LLM Foundry; each is cited where it is
 * implemented (lib/icl.c, lib/icl_suite.c):
 *   llmfoundry/eval/datasets/in_context_learning_evaluation.py   (prompts)
 *   llmfoundry/eval/datasets/utils.py         (strip_data, few-shot sampling)
 *   llmfoundry/eval/metrics/nlp.py            (answer normalisation, match)
 *   llmfoundry/utils/builders.py              (suite defaults)
 *   llmfoundry/callbacks/eval_gauntlet_callback.py  (gauntlet arithmetic)
 *
 * Errors fail the tool through upc_fail: EX_NOINPUT for a file that cannot
 * be opened, EX_DATAERR for bad content, always naming FILE:LINE and the
 * field or key. */
#ifndef UPCYC_ICL_H
#define UPCYC_ICL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { ICL_LANGUAGE_MODELING, ICL_MULTIPLE_CHOICE, ICL_SCHEMA, ICL_GENERATION } icl_type;

/* "language_modeling", "multiple_choice", "schema",
 * "generation_task_with_answers" and its deprecated Foundry alias
 * "question_answering". False for anything else (code_evaluation, ...). */
bool icl_type_parse(const char *name, icl_type *out);
/* The canonical name (generation -> "generation_task_with_answers"). */
const char *icl_type_name(icl_type t);

/* One JSONL line. Fields by type (Foundry's keys):
 *   language_modeling: "context" (string), "continuation" (string)
 *   multiple_choice:   "query" -> context, "choices" (non-empty list of
 *                      strings), "gold" (integer index into choices)
 *   schema:            "context_options" -> choices (non-empty list of
 *                      strings), "continuation", "gold" (index into them)
 *   generation_task_with_answers: "context", "answer" (strings), "aliases"
 *                      (optional list of strings)
 * Other keys are ignored. As Foundry's strip_data (strip_dataset=True, the
 * default for every type here) does, top-level string fields (context,
 * query, continuation, answer) are stripped of leading and trailing
 * whitespace at load; list elements (choices, context_options, aliases) are
 * kept as written. Blank lines are skipped. Unused fields are NULL/0. */
typedef struct {
    char *context;          /* language_modeling, generation: "context"; multiple_choice: "query" */
    char *continuation;     /* language_modeling, schema */
    char **choices;         /* multiple_choice: "choices"; schema: "context_options" */
    size_t n_choices;
    int gold;               /* multiple_choice, schema; else 0 */
    char *answer;           /* generation */
    char **aliases;         /* generation: "aliases" as written (may be empty) */
    size_t n_aliases;
    size_t line;            /* 1-based line in the file, for messages */
} icl_item;

typedef struct {
    icl_type type;
    char *path;
    icl_item *items;
    size_t n;
} icl_dataset;

/* Load a JSONL task file. Fails with EX_NOINPUT when it cannot be opened;
 * EX_DATAERR for: an empty file (no items), a line that is not valid JSON
 * ("PATH:LINE: malformed JSON at column C: ..."), a line that is not an
 * object, a missing field ("PATH:LINE: missing field \"query\" ..."), a field
 * of the wrong type ("PATH:LINE: field \"gold\": expected an integer, got a
 * string"), an empty choices list, gold out of range ("PATH:LINE: field
 * \"gold\": 4 is out of range for 4 choices"). */
void icl_dataset_load(icl_dataset *d, const char *path, icl_type type);
void icl_dataset_free(icl_dataset *d);

/* Foundry's defaults (builders.py), used when a string here is NULL. */
#define ICL_DEFAULT_PROMPT_STRING ""
#define ICL_DEFAULT_CONTINUATION_DELIMITER " "
#define ICL_DEFAULT_EXAMPLE_DELIMITER "\n"
#define ICL_DEFAULT_PRELIMITER ""
#define ICL_DEFAULT_FEWSHOT_SEED 1234

typedef struct {
    const char *prompt_string, *continuation_delimiter, *example_delimiter;  /* Foundry defaults if NULL */
    const char *prelimiter;     /* Foundry's question_prelimiter: before every context; NULL = "" */
    int num_fewshot;            /* < 0 is treated as 0 */
    uint64_t seed;              /* Foundry's fewshot_random_seed (its default: 1234) */
    /* Foundry puts a space in front of each scored continuation (and each
     * multiple-choice choice) that does not start with one when the tokenizer
     * "needs a prefix space": " a" encodes to one token, as in byte-level
     * (GPT-2 style) BPE, upcyc's kind. Set this for tokenizers where it does
     * not (SentencePiece); zero keeps Foundry's GPT-2 behaviour. */
    bool no_prefix_space;
} icl_prompt_opts;

/* One scored item, assembled with its few-shot prefix. Each candidate is the
 * text before the scored part (context, with prompt_string and few-shot
 * examples in front) and the scored text (continuation).
 *   language_modeling: 1 candidate, gold 0;
 *   multiple_choice:   one per choice (same context, choice as continuation);
 *   schema:            one per context option (different contexts, same
 *                      continuation);
 *   generation:        1 candidate whose continuation is "" and answers[] =
 *                      answer then aliases, duplicates dropped (Foundry keeps
 *                      set([answer] + aliases)); the model generates after
 *                      context. answers is NULL for the other types.
 *
 * Assembly (Foundry's InContextLearningDataset._generate_few_shot_prompt,
 * construct_context, tokenize_example; P = prelimiter, ED/CD = example /
 * continuation delimiter, with ED written before a piece only when the text
 * before it is non-empty):
 *   preamble = prompt_string, then for each few-shot example
 *              [ED] P context CD answer      (answer: LM continuation, MC
 *              choices[gold], generation answer; never a prefix space)
 *              schema examples: P [ED] context_options[gold] CD continuation
 *   LM, MC, generation: context = preamble + rstrip([ED] P context CD)
 *   schema: context_i = preamble + P + option_i            (empty preamble)
 *                     = preamble + P ED option_i rstrip(CD) (otherwise)
 *   continuation = continuation / choice, with " " put in front unless it
 *                  already starts with one or no_prefix_space is set.
 * preamble_len is the length of the preamble at the start of every context:
 * Foundry tokenizes the preamble (with the tokenizer's special tokens, e.g.
 * BOS, dropping a trailing EOS) and the rest of the context (without) apart
 * and concatenates the ids; a scorer that wants Foundry's exact tokens does
 * the same split.
 *
 * Few-shot examples: min(num_fewshot, n - 1) distinct items, never the
 * scored item, chosen as Foundry's get_fewshot_sample_idxs does (sample
 * without replacement from all n; if the item itself was drawn, drop it and
 * draw a replacement uniformly until one is neither the item nor already
 * chosen), listed in ascending index order. The generator is splitmix64
 * seeded from (seed, item), not Python's Mersenne Twister shared across
 * items in order, so the indices differ from Foundry's but any item's query
 * can be built alone and is the same for the same seed. */
typedef struct {
    char *context;
    char *continuation;
} icl_candidate;

typedef struct {
    icl_candidate *cands;
    size_t n;
    int gold;
    char **answers;
    size_t n_answers;
    size_t preamble_len;        /* bytes of prompt + few-shot text at the start of every context */
    size_t *fewshot;            /* indices of the few-shot items used, ascending */
    size_t n_fewshot;
} icl_query;

void icl_build_query(const icl_dataset *d, size_t item, const icl_prompt_opts *o, icl_query *q);
void icl_query_free(icl_query *q);

/* Generation scoring, Foundry's InContextLearningGenerationAccuracy
 * (metrics/nlp.py, from the TriviaQA evaluation script): '_' -> ' ',
 * lowercase, each punctuation character (ASCII punctuation and ‘ ’ ´ `) ->
 * ' ', the words a/an/the -> ' ', whitespace runs collapsed to one space,
 * ends stripped. Lowercasing covers ASCII, Latin-1, Latin Extended-A, Greek
 * and Cyrillic; other code points are kept, and every non-ASCII code point
 * other than a Unicode space counts as a word character for the article
 * rule. Returns a new string. */
char *icl_normalize_answer(const char *s);
/* Foundry's rule: correct when the normalised generation starts with the
 * normalised form of any answer (so an answer normalising to "" matches
 * anything, as in Foundry). Foundry first cuts the generation at the first
 * early_stopping_criteria string and after the last cot_delimiter; use
 * icl_cut_generation for that. */
bool icl_answer_matches(const char *generated, char *const *answers, size_t n);
/* The part of generated before the first occurrence of any stop string
 * (Foundry splits on them as literal alternatives), newly allocated. */
char *icl_cut_generation(const char *generated, char *const *stop, size_t n_stop);

/* Suites: LLM Foundry's own YAML (read with libyaml). */
typedef struct {
    char *label;
    char *dataset_uri;          /* resolved: relative to the YAML file's directory if that file exists,
                                 * else as given (absolute paths and URIs as given) */
    int *num_fewshot;           /* a list, or one integer */
    size_t n_fewshot;
    icl_type type;              /* icl_task_type */
    char *prompt_string, *continuation_delimiter, *example_delimiter;   /* NULL = default */
    char *prelimiter;           /* question_prelimiter; NULL = default */
    char **early_stopping;      /* early_stopping_criteria (generation), may be empty */
    size_t n_early_stopping;
    uint64_t fewshot_random_seed;   /* default 1234 */
} icl_task_spec;

typedef struct {
    icl_task_spec *tasks;
    size_t n;
} icl_suite;

/* A file whose top level is a mapping with icl_tasks: [...] (or icl_tasks:
 * PATH, a string naming another such file, resolved like dataset_uri), or
 * whose top level is the list itself. Each task needs label, dataset_uri,
 * num_fewshot (non-negative integers) and icl_task_type (one
 * icl_type_parse knows); prompt_string, continuation_delimiter,
 * example_delimiter, question_prelimiter, early_stopping_criteria and
 * fewshot_random_seed are read; other keys (has_categories, metric_names,
 * batch_size, cot_delimiter, ...) are ignored. A plain null / ~ / empty
 * value counts as absent (default); quoted strings are taken as written,
 * escapes such as "\n" decoded. Errors (EX_DATAERR) name PATH:LINE, with the
 * parser's line for YAML syntax errors. */
void icl_suite_load(icl_suite *s, const char *yaml_path);
void icl_suite_free(icl_suite *s);

typedef struct {
    char *name;
    int num_fewshot;
    double random_baseline;
} gauntlet_benchmark;

typedef struct {
    char *name;
    gauntlet_benchmark *benchmarks;
    size_t n;
} gauntlet_category;

/* A named average: the mean of the scores of the listed categories. */
typedef struct {
    char *name;
    char **categories;
    size_t n;
} gauntlet_average;

typedef struct {
    gauntlet_category *cats;
    size_t n;
    bool subtract_random_baseline, rescale_accuracy;   /* both default true */
    char weighting[16];                                 /* "EQUAL" */
    gauntlet_average *averages;     /* "averages:", or one "default_average" of every category */
    size_t n_averages;
} gauntlet;

/* A file with top-level eval_gauntlet: {...} (or eval_gauntlet: PATH). Keys:
 * categories (list of {name, benchmarks: [{name, num_fewshot,
 * random_baseline}]}), weighting, subtract_random_baseline,
 * rescale_accuracy, averages (name -> list of category names). Refused as
 * Foundry refuses them: rescale_accuracy without subtract_random_baseline,
 * an average named like a category; and weighting other than EQUAL (Foundry
 * then needs benchmark sizes, which upcyc does not take), a random_baseline
 * outside [0, 1) when rescaling. */
void gauntlet_load(gauntlet *g, const char *yaml_path);
void gauntlet_free(gauntlet *g);

/* Aggregation, Foundry's EvalGauntlet.eval_after_all with EQUAL weighting:
 * per benchmark score = acc, minus random_baseline if
 * subtract_random_baseline, divided by (1 - random_baseline) if also
 * rescale_accuracy; category score = mean of its benchmarks' scores. acc is
 * looked up by (benchmark name = task label, num_fewshot): Foundry's key
 * "label/N-shot" (for tasks with subcategories it takes the mean over them,
 * which acc must do). A category with any benchmark missing (found false) is
 * removed from the scores as Foundry removes it: its category_scores entry
 * is NAN and it counts in no average. Named averages (Foundry's
 * calculate_named_averages) = mean over the listed categories that have a
 * score, 0 when none has. core_average = the average named "core_average"
 * when the file has one, else the first named average (so "default_average",
 * every category, for a file without averages); 0 when none of its
 * categories has a score. Foundry returns no scores at all when no metric
 * was computed; here every category is then NAN and core_average 0. */
typedef double (*gauntlet_lookup)(void *ctx, const char *label, int num_fewshot, bool *found);
void gauntlet_score(const gauntlet *g, gauntlet_lookup acc, void *ctx, double *category_scores /* [g->n] */,
                    double *core_average);
/* Every named average, from category_scores as gauntlet_score fills them. */
void gauntlet_averages(const gauntlet *g, const double *category_scores, double *averages /* [g->n_averages] */);

#endif
