/* bpe_pattern.c: the pre-tokenization regexes of the well-known byte-level
 * BPE encodings, exactly as tiktoken writes them (PCRE2 accepts them as is). */
#include "bpe.h"

#include <string.h>

static const struct {
    const char *name;
    const char *pattern;
} named_patterns[] = {
    /* GPT-2, r50k_base, p50k_base; HF ByteLevel(use_regex=true). */
    {"gpt2",
     "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
    {"cl100k",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
     " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"o200k",
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
     "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
};

const char *bpe_pattern_named(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < sizeof named_patterns / sizeof named_patterns[0]; i++)
        if (strcmp(name, named_patterns[i].name) == 0)
            return named_patterns[i].pattern;
    return NULL;
}
