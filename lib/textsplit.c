/* textsplit.c: documents from text by file, line, paragraph or separator. */
#include "textsplit.h"

#include <string.h>

bool split_parse(const char *s, split_spec *out)
{
    memset(out, 0, sizeof *out);
    if (strcmp(s, "file") == 0)
        out->mode = SPLIT_FILE;
    else if (strcmp(s, "line") == 0)
        out->mode = SPLIT_LINE;
    else if (strcmp(s, "paragraph") == 0)
        out->mode = SPLIT_PARAGRAPH;
    else if (strncmp(s, "separator=", 10) == 0 && s[10]) {
        out->mode = SPLIT_SEPARATOR;
        out->separator = s + 10;
        out->separator_len = strlen(s + 10);
    } else
        return false;
    return true;
}

void split_begin(split_iter *it, const char *text, size_t len)
{
    it->text = text;
    it->len = len;
    it->pos = 0;
    it->done = false;
}

/* The line starting at pos: its length with the newline, and without a
 * trailing "\n" or "\r\n" (the content). */
static size_t line_at(const split_iter *it, size_t pos, size_t *content)
{
    const char *p = it->text + pos;
    const char *nl = memchr(p, '\n', it->len - pos);
    size_t full = nl ? (size_t)(nl - p) + 1 : it->len - pos;
    size_t c = nl ? full - 1 : full;
    if (c && p[c - 1] == '\r')
        c--;
    *content = c;
    return full;
}

static bool is_delimiter(const split_spec *s, const char *line, size_t content)
{
    if (s->mode == SPLIT_PARAGRAPH) {
        for (size_t i = 0; i < content; i++)
            if (line[i] != ' ' && line[i] != '\t')
                return false;
        return true;
    }
    return content == s->separator_len && memcmp(line, s->separator, content) == 0;
}

bool split_next(const split_spec *s, split_iter *it, const char **doc, size_t *n)
{
    if (s->mode == SPLIT_FILE) {
        if (it->done)
            return false;
        it->done = true;
        *doc = it->text;
        *n = it->len;
        return true;
    }
    size_t content;
    if (s->mode == SPLIT_LINE) {
        if (it->pos >= it->len)
            return false;
        size_t full = line_at(it, it->pos, &content);
        *doc = it->text + it->pos;
        *n = full;
        it->pos += full;
        return true;
    }
    /* Paragraphs and separated records: skip delimiter lines, then take
     * lines up to the next delimiter. */
    while (it->pos < it->len) {
        size_t full = line_at(it, it->pos, &content);
        if (!is_delimiter(s, it->text + it->pos, content))
            break;
        it->pos += full;
    }
    if (it->pos >= it->len)
        return false;
    size_t start = it->pos;
    while (it->pos < it->len) {
        size_t full = line_at(it, it->pos, &content);
        if (is_delimiter(s, it->text + it->pos, content))
            break;
        it->pos += full;
    }
    *doc = it->text + start;
    *n = it->pos - start;
    return true;
}
