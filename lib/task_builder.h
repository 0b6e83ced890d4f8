/* task_builder.h: downstream tasks made from held-out text of any corpus, so
 * `evaluate` has in-context-learning tasks without downloads. Two task types,
 * written in MosaicML LLM Foundry's ICL formats, plus a suite (icl_tasks) and
 * an Eval Gauntlet file that use them.
 *
 * LAMBADA-style last-word prediction (lambada.jsonl, icl_task_type
 * language_modeling): one line per item, {"context":C,"continuation":" W"}.
 *   - A document is trimmed of leading and trailing ASCII whitespace (Foundry's
 *     strip_dataset does the same to every string, so an item reads the same
 *     with or without it). Nothing else is changed: internal whitespace, line
 *     breaks and punctuation stay as they are, so items look like the text the
 *     model was trained on.
 *   - The target W is the document's last word: after dropping trailing
 *     characters that are not word characters (punctuation, symbols,
 *     whitespace), the run of word characters that ends the text. Word
 *     characters are ASCII letters and digits and non-ASCII letters
 *     (approximated: every code point from U+00C0 up except the punctuation,
 *     symbol and emoji blocks; see is_word_cp in task_builder.c).
 *   - The word must start after ASCII whitespace: "don't." (target "t"),
 *     "well-known" or "(word)" are not whole words and the document is not
 *     used. The context C is the text before W with trailing whitespace
 *     removed; the continuation is " " + W (lm-evaluation-harness's
 *     lambada_openai target carries its leading space the same way; Foundry
 *     strips it and puts it back for tokenizers that need it). The whitespace
 *     between C and W (a newline, say) becomes that one space.
 *   - C must hold at least min_context_words whitespace-separated words.
 *
 * HellaSwag-style continuation choice (hellaswag.jsonl, multiple_choice): one
 * line per item, {"query":Q,"choices":[...],"gold":i}.
 *   - A document (trimmed as above) with at least 8 whitespace-separated words
 *     is cut between word k and k+1, k drawn with the seed from
 *     [ceil(0.4 n), floor(0.7 n)] clamped to [4, n-4] (n words). Q is the text
 *     up to the end of word k; the gold ending is " " + the rest (text kept as
 *     is, as for LAMBADA).
 *   - The other choices - 1 endings are the endings (cut the same way) of
 *     other documents: never the item's own document, never equal to the gold
 *     ending, no two equal. Endings of similar length are preferred, so length
 *     alone does not give the answer away: the 3 * (choices - 1) usable
 *     endings nearest in byte length are collected and choices - 1 of them
 *     drawn with the seed. A document without enough distinct other endings
 *     gives no item. The choice order is shuffled with the seed; gold is the
 *     index of the true ending.
 *
 * Both tasks: items are drawn from the eligible documents in a seeded order
 * (a separate order per task), at most max_items per task; a document may be
 * an item in both tasks. Documents that are not valid UTF-8 (strict: no
 * overlong forms, surrogates or code points above U+10FFFF) are skipped.
 * JSON is compact, keys in the order above, UTF-8 unescaped except what JSON
 * requires (quote, backslash, control characters).
 *
 * icl_tasks.yaml lists lambada_heldout (num_fewshot [0, 3]) and
 * hellaswag_heldout (num_fewshot [0]) with dataset_uri relative to the YAML's
 * directory and Foundry's default delimiters written out (prompt_string "",
 * example_delimiter "\n", continuation_delimiter " "). The labels say
 * "heldout" because the numbers are not comparable with the published
 * LAMBADA and HellaSwag. Zero-shot HellaSwag (lm-evaluation-harness's
 * default) keeps prompts short for small models and avoids Foundry's
 * few-shot quirk of joining query + " " + a choice that already starts with a
 * space; 3-shot LAMBADA shows a small model that the answer is one word that
 * ends the passage (GPT-3 paper, sec. 3.1.2). eval_gauntlet.yaml has one
 * category, language_understanding (where Foundry's gauntlet puts LAMBADA and
 * HellaSwag), with both benchmarks at 0 shots, random_baseline 0 and
 * 1/choices, weighting EQUAL, subtract_random_baseline and rescale_accuracy
 * true, and core_average over that category.
 *
 * Same documents and options give the same bytes: every random choice comes
 * from splitmix64 streams derived from the seed and the document's index. */
#ifndef UPCYC_TASK_BUILDER_H
#define UPCYC_TASK_BUILDER_H

#include <stddef.h>
#include <stdint.h>

/* UTF-8 text of one held-out document; any bytes (not NUL-terminated). */
typedef struct {
    const char *text;
    size_t len;
} tb_doc;

typedef struct {
    uint64_t seed;
    size_t max_items;          /* per task (default 500); 0 means no limit */
    size_t min_context_words;  /* LAMBADA-style: words before the target (default 8) */
    int choices;               /* HellaSwag-style: choices per item (default 4, at least 2) */
} tb_options;

void tb_options_default(tb_options *o);

typedef struct {
    size_t lambada, hellaswag;  /* items written */
    size_t skipped;             /* documents eligible for neither task (invalid UTF-8 included) */
    size_t invalid_utf8;        /* documents that are not valid UTF-8 */
    size_t lambada_eligible;    /* documents that could be LAMBADA items */
    size_t hellaswag_eligible;  /* documents long enough for a HellaSwag cut */
} tb_stats;

/* Write OUT_DIR/lambada.jsonl, OUT_DIR/hellaswag.jsonl, OUT_DIR/icl_tasks.yaml
 * and OUT_DIR/eval_gauntlet.yaml (rules above). OUT_DIR must exist (else
 * EX_CANTCREAT naming it). Every file appears atomically, and only once all
 * four are fully written: a write error (full disk) fails with EX_IOERR and
 * leaves none of this run's files behind. st may be NULL. Empty task files
 * are written when no document qualifies; the caller decides whether that is
 * an error. */
void tb_build(const tb_doc *docs, size_t n, const tb_options *o, const char *out_dir, tb_stats *st);

#endif
