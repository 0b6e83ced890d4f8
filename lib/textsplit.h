/* textsplit.h: divide a text buffer into documents, the way `tokenize`'s
 * --split option names: a whole file, each line, each paragraph, or the text
 * between separator lines (the "%" lines of fortune files). A document's
 * text is its lines' bytes exactly, newlines included; delimiter lines (blank
 * lines, separator lines) belong to no document. */
#ifndef UPCYC_TEXTSPLIT_H
#define UPCYC_TEXTSPLIT_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { SPLIT_FILE, SPLIT_LINE, SPLIT_PARAGRAPH, SPLIT_SEPARATOR } split_mode;

typedef struct {
    split_mode mode;
    const char *separator;   /* for SPLIT_SEPARATOR: the line's text, e.g. "%" */
    size_t separator_len;
} split_spec;

/* Parse "file", "line", "paragraph" or "separator=TEXT"; false if invalid. */
bool split_parse(const char *s, split_spec *out);

typedef struct {
    const char *text;
    size_t len, pos;
    bool done;
} split_iter;

void split_begin(split_iter *it, const char *text, size_t len);
/* Next document as [*doc, *doc + *n). False when there are no more. In file
 * mode a buffer (even an empty one) is exactly one document; in the other
 * modes empty documents are skipped. */
bool split_next(const split_spec *s, split_iter *it, const char **doc, size_t *n);

#endif
