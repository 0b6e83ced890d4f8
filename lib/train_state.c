/* train_state.c: trainer_state.json read and write (train_state.h). */
#include "train_state.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static char *to_hex(const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *s = upc_malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        s[2 * i] = digits[p[i] >> 4];
        s[2 * i + 1] = digits[p[i] & 15];
    }
    s[2 * n] = 0;
    return s;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

void train_state_save(const train_state *s, const char *path)
{
    char *hex = to_hex(s->cursor, s->cursor_len);
    json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:f, s:i, s:{s:I, s:I, s:s}, s:O}", "format", TRAIN_STATE_FORMAT,
                          "version", TRAIN_STATE_VERSION, "step", (json_int_t)s->step, "tokens",
                          (json_int_t)s->tokens, "elapsed_s", s->elapsed_s, "threads", s->threads, "data_cursor",
                          "epoch", (json_int_t)s->cursor_epoch, "step", (json_int_t)s->cursor_step,
                          "msgpack_hex", hex, "settings", s->settings ? s->settings : json_object());
    free(hex);
    if (!o)
        upc_fail(EX_SOFTWARE, "%s: cannot build the trainer state", path);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(o);
    upc_out out;
    upc_out_open(&out, path);
    upc_out_write(&out, text, strlen(text));
    upc_out_write(&out, "\n", 1);
    upc_out_commit(&out);
    free(text);
}

void train_state_load(train_state *s, const char *path)
{
    memset(s, 0, sizeof *s);
    size_t len;
    char *text = upc_read_file(path, &len);
    json_error_t err;
    json_t *o = json_loadb(text, len, 0, &err);
    free(text);
    if (!o)
        upc_fail(EX_DATAERR, "%s: line %d: %s", path, err.line, err.text);
    const char *format = NULL, *hex = NULL;
    json_int_t version = 0, step = -1, tokens = -1, threads = 0, epoch = -1, cstep = -1;
    double elapsed = 0;
    json_t *settings = NULL;
    if (json_unpack_ex(o, &err, 0, "{s:s, s:I, s:I, s:I, s:F, s:I, s:{s:I, s:I, s:s}, s:o}", "format", &format,
                       "version", &version, "step", &step, "tokens", &tokens, "elapsed_s", &elapsed, "threads",
                       &threads, "data_cursor", "epoch", &epoch, "step", &cstep, "msgpack_hex", &hex, "settings",
                       &settings) != 0)
        upc_fail(EX_DATAERR, "%s: %s", path, err.text);
    if (strcmp(format, TRAIN_STATE_FORMAT) != 0)
        upc_fail(EX_DATAERR, "%s: format is \"%s\", expected \"%s\"", path, format, TRAIN_STATE_FORMAT);
    if (version != TRAIN_STATE_VERSION)
        upc_fail(EX_DATAERR, "%s: version %lld, this build reads version %d", path, (long long)version,
                 TRAIN_STATE_VERSION);
    if (step < 0 || tokens < 0 || epoch < 0 || cstep < 0 || threads < 0 || !json_is_object(settings))
        upc_fail(EX_DATAERR, "%s: a negative count or settings that are not an object", path);
    size_t n = strlen(hex);
    if (n % 2)
        upc_fail(EX_DATAERR, "%s: data_cursor.msgpack_hex has an odd length", path);
    s->cursor = upc_malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            upc_fail(EX_DATAERR, "%s: data_cursor.msgpack_hex is not lowercase hex", path);
        s->cursor[i] = (unsigned char)(hi << 4 | lo);
    }
    s->cursor_len = n / 2;
    s->step = step;
    s->tokens = tokens;
    s->elapsed_s = elapsed;
    s->threads = (int)threads;
    s->cursor_epoch = (uint64_t)epoch;
    s->cursor_step = (uint64_t)cstep;
    s->settings = json_incref(settings);
    json_decref(o);
}

void train_state_free(train_state *s)
{
    free(s->cursor);
    json_decref(s->settings);
    memset(s, 0, sizeof *s);
}
