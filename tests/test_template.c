/* Chat templates: every render of ../shared/fixtures/chat_templates/renders.json byte for byte,
 * every error row fails, and the engine's own rules (whitespace control, scoping, filters). */
#include <stdlib.h>

#include "base/file.h"
#include "format/json.h"
#include "hubcap.h"
#include "template/jinja.h"
#include "test_util.h"

static hc_status render(const char *tmpl, const char *ctx_json, char **out) {
    hc_json_doc ctx;
    hc_status s = hc_json_parse(&ctx, ctx_json, strlen(ctx_json), "context");
    if (s) return s;
    s = hc_jinja_render(tmpl, strlen(tmpl), "t", ctx.root, out, NULL);
    hc_json_free(&ctx);
    return s;
}

static void expect(const char *tmpl, const char *ctx, const char *want) {
    char *out = NULL;
    hc_status s = render(tmpl, ctx, &out);
    CHECK(s == HC_OK, "render %s: %s", tmpl, hc_last_error());
    CHECK(out && !strcmp(out, want), "render %s\n  got  [%s]\n  want [%s]", tmpl, out ? out : "", want);
    free(out);
}

static void expect_error(const char *tmpl, const char *ctx, const char *needle) {
    char *out = NULL;
    hc_status s = render(tmpl, ctx, &out);
    CHECK(s != HC_OK, "render %s should fail, gave [%s]", tmpl, out ? out : "");
    CHECK(strstr(hc_last_error(), needle) != NULL, "error for %s has '%s': %s", tmpl, needle, hc_last_error());
    free(out);
}

static void test_engine(void) {
    /* whitespace: trim_blocks, lstrip_blocks, - markers */
    expect("{% if true %}\nyes\n{% endif %}\n", "{}", "yes\n");
    expect("  {% if true %}x{% endif %}", "{}", "x");
    expect("a  {%- if true -%}  b  {%- endif %}", "{}", "ab");
    expect("{{- ' a ' -}}", "{}", " a ");
    expect("x {{ 1 }}\n{# c #}\ny", "{}", "x 1\ny");
    expect("{% raw %}{{ not }}{% endraw %}", "{}", "{{ not }}");
    /* values and Python's printing */
    expect("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 1 / 4 }}", "{}", "7 3 -4 1 1024 0.25");
    expect("{{ [1, 'a', none, true] }} {{ {'k': 1.0} }} {{ (1,) }}", "{}", "[1, 'a', None, True] {'k': 1.0} (1,)");
    expect("{{ 'a' ~ 1 ~ none }} {{ 'ab' * 3 }} {{ '%s-%d' % ('x', 4) }}", "{}", "a1None ababab x-4");
    expect("{{ x | tojson }} {{ x | tojson(indent=2) }}", "{\"x\": {\"a\": [1, 2.5, \"é\\n\"], \"b\": null}}",
           "{\"a\": [1, 2.5, \"é\\n\"], \"b\": null} {\n  \"a\": [\n    1,\n    2.5,\n    \"é\\n\"\n  ],\n  \"b\": null\n}");
    expect("{{ 1e20 }} {{ 0.1 + 0.2 }} {{ 3.0 }} {{ 0.00001 }}", "{}", "1e+20 0.30000000000000004 3.0 1e-05");
    /* slicing, methods, filters */
    expect("{{ 'héllo'[1:3] }}{{ [1,2,3][::-1] }}{{ 'abc'[-1] }}", "{}", "él[3, 2, 1]c");
    expect("{{ ' a b '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'x y  z'.split() }}|{{ 'aXbXc'.rsplit('X', 1) }}", "{}",
           "a b|['a', 'b', '', 'c']|['x', 'y', 'z']|['aXb', 'c']");
    expect("{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} {{ 'hi {}!'.format('you') }}", "{}",
           "True True hi you!");
    expect("{{ 'aa'|upper }} {{ 'hello world'|title }} {{ ' x '|trim }} {{ [3,1,2]|sort|join(',') }}", "{}",
           "AA Hello World x 1,2,3");
    expect("{{ xs|selectattr('r', 'equalto', 'u')|map(attribute='c')|list }} {{ xs|rejectattr('r', 'eq', 'u')|length }}",
           "{\"xs\": [{\"r\": \"u\", \"c\": 1}, {\"r\": \"a\", \"c\": 2}, {\"r\": \"u\", \"c\": 3}]}", "[1, 3] 1");
    expect("{{ d|dictsort }} {{ d|items|list }} {{ d.get('z', 9) }} {{ d.b }}", "{\"d\": {\"b\": 2, \"a\": 1}}",
           "[('a', 1), ('b', 2)] [('b', 2), ('a', 1)] 9 2");
    expect("{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}", "{}", "a\n  b|  a\n  b");
    expect("{{ u|default('d') }} {{ ''|default('d', true) }} {{ u is defined }} {{ none is none }}", "{}", "d d False True");
    expect("{{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ 'x' is string }} {{ {} is mapping }} {{ [] is iterable }}", "{}",
           "True True True True True");
    /* loops, scoping, namespace, macros */
    expect("{% for x in [1,2,3] %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", "{}", "11,22,33");
    expect("{% for x in [] %}a{% else %}empty{% endfor %}", "{}", "empty");
    expect("{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}", "{}", "a=1");
    expect("{% for x in range(5) if x is odd %}{{ x }}{% endfor %}", "{}", "13");
    expect("{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}", "{}", "1");
    expect("{% for x in [1,2,3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}", "{}", "13");
    expect("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", "{}", "1");
    expect("{% set ns = namespace(x=1) %}{% for i in [1] %}{% set ns.x = 2 %}{% endfor %}{{ ns.x }}", "{}", "2");
    expect("{% macro m(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}", "{}", "[1B][23]");
    expect("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in{% endcall %}", "{}", "<in>");
    expect("{% set t %}  x {% endset %}[{{ t }}]", "{}", "[  x ]");
    expect("{% filter upper %}abc{% endfilter %}", "{}", "ABC");
    expect("{{ 'yes' if 1 else 'no' }}{{ 'x' if 0 }}", "{}", "yes");
    expect("{% for x in 'ab' %}{{ loop.previtem }}{{ x }}{{ loop.nextitem }}|{% endfor %}", "{}", "ab|ab|");
    /* errors */
    expect_error("{{ raise_exception('nope') }}", "{}", "nope");
    expect_error("{{ x | frobnicate }}", "{}", "no filter named 'frobnicate'");
    expect_error("{% if x is weird %}{% endif %}", "{}", "no test named 'weird'");
    expect_error("line1\n{% for x in y %}\n{% endif %}", "{}", "t:3:4: unexpected 'endif'");
    expect_error("{% if true %}open", "{}", "unexpected end of template");
    expect_error("{{ 'a' + u }}", "{}", "'u' is undefined");
    expect_error("{{ (1 + ) }}", "{}", "t:1:9:");
    expect_error("{% set x = [] %}{{ x.append(1) }}", "{}", "unsafe");
    expect_error("{% frob %}", "{}", "unknown tag 'frob'");
}

/* A template is whoever published the model's input: nesting, values, strings and integers past
 * the engine's bounds fail with a message, where they used to overflow the stack, trap on
 * INT64_MIN // -1, wrap, or run for ever (found by fuzz_template). */
static char *repeat3(const char *head, const char *unit, int n, const char *mid, const char *unit2, int n2, const char *tail) {
    const size_t len = strlen(head) + strlen(unit) * (size_t)n + strlen(mid) + strlen(unit2) * (size_t)n2 + strlen(tail);
    char *s = malloc(len + 1), *p = s;
    p += sprintf(p, "%s", head);
    for (int i = 0; i < n; i++) p += sprintf(p, "%s", unit);
    p += sprintf(p, "%s", mid);
    for (int i = 0; i < n2; i++) p += sprintf(p, "%s", unit2);
    sprintf(p, "%s", tail);
    return s;
}

static void test_hostile(void) {
    static const struct {
        const char *head, *unit, *mid, *unit2, *tail, *needle;
    } deep[] = {
        {"{{ ", "(", "1", ")", " }}", "levels deep"},
        {"{{ ", "[", "", "]", " }}", "levels deep"},
        {"{{ ", "-", "1", "", " }}", "levels deep"},
        {"{{ ", "not ", "1", "", " }}", "levels deep"},
        {"", "{% if 1 %}", "x", "{% endif %}", "", "levels deep"},
        {"{{ 1", " + 1", "", "", " }}", "levels deep"},
        {"{{ x", ".a", "", "", " }}", "levels deep"},
        {"{{ x", "|string", "", "", " }}", "levels deep"},
    };
    for (size_t i = 0; i < sizeof deep / sizeof deep[0]; i++) {
        /* 50 levels render (or fail for their own reasons, not depth); 100000 fail on depth */
        char *ok = repeat3(deep[i].head, deep[i].unit, 50, deep[i].mid, deep[i].unit2, deep[i].unit2[0] ? 50 : 0, deep[i].tail);
        char *out = NULL;
        if (render(ok, "{\"x\": {\"a\": 1}}", &out) != HC_OK)
            CHECK(!strstr(hc_last_error(), "levels deep"), "50 levels of %s are allowed: %s", deep[i].unit, hc_last_error());
        free(out);
        free(ok);
        char *bad = repeat3(deep[i].head, deep[i].unit, 100000, deep[i].mid, deep[i].unit2, deep[i].unit2[0] ? 100000 : 0, deep[i].tail);
        expect_error(bad, "{\"x\": {\"a\": 1}}", deep[i].needle);
        free(bad);
    }
    /* values built a level per loop step: printing, tojson, == and sorting walk them */
    static const char *walks[] = {"{{ ns.x }}", "{{ ns.x|tojson }}", "{{ ns.x == ns.x }}", "{{ [ns.x, ns.x]|sort }}"};
    for (size_t i = 0; i < sizeof walks / sizeof walks[0]; i++) {
        char t[512];
        snprintf(t, sizeof t, "{%% set ns = namespace(x=[]) %%}{%% for i in range(100000) %%}{%% set ns.x = [ns.x] %%}{%% endfor %%}%s", walks[i]);
        expect_error(t, "{}", "a value nested more than");
    }
    expect("{% set ns = namespace(x=[]) %}{% for i in range(3) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}", "{}", "[[[[]]]]");
    /* strings: bounded, and "" * n takes no time */
    expect_error("{{ 'a' * 100000000000 }}", "{}", "a string longer than 64 MiB");
    expect_error("{{ 'x'|center(2000000000) }}", "{}", "a string longer than 64 MiB");
    expect("{{ '' * 100000000000 }}x", "{}", "x");
    /* 64-bit integers */
    expect_error("{{ (-9223372036854775807 - 1) // -1 }}", "{}", "integer overflow");
    expect_error("{{ 9223372036854775807 + 1 }}", "{}", "integer overflow");
    expect_error("{{ -(-9223372036854775807 - 1) }}", "{}", "integer overflow");
    expect_error("{{ 3 * 4611686018427387904 }}", "{}", "integer overflow");
    expect_error("{{ 2 ** 64 }}", "{}", "integer overflow");
    expect_error("{{ 1e300|int }}", "{}", "cannot convert float");
    expect_error("{{ '99999999999999999999'|int }}", "{}", "integer overflow");
    expect_error("{{ range(1e30) }}", "{}", "cannot convert float");
    expect("{{ (-9223372036854775807 - 1) % -1 }} {{ 2 ** 62 }} {{ (-2) ** 63 }} {{ (-1) ** 9223372036854775807 }} {{ 7 // -2 }} {{ -7 % 2 }}",
           "{}", "0 4611686018427387904 -9223372036854775808 -1 -4 1");
    expect("{{ range(9223372036854775800, 9223372036854775807, 5)|list }}", "{}", "[9223372036854775800, 9223372036854775805]");
    expect("{{ 'nan'|float|int(5) }}", "{}", "5");
    expect_error("{{ (-9223372036854775807 - 1)|abs }}", "{}", "integer overflow");
    /* numbers asked of things that are not (these read a union's wrong member) */
    expect_error("{{ '%d' % 'abc' }}", "{}", "%d format: a real number is required, not str");
    expect_error("{{ range('a') }}", "{}", "'str' object cannot be interpreted as an integer");
    expect_error("{{ 'x'|round }}", "{}", "round needs a number");
    expect("{{ -5|abs }} {{ 2.567|round(1) }} {{ '%d' % 3.9 }} {{ +7 }}", "{}", "5 2.6 3 7");
    /* printf-style formatting as Python's (expected values from CPython); it used to print '%05d' % 3 as "35d" */
    expect("{{ '%05d|%-5d|%+d|% d|%.3d|%05.3d' % (3, 3, -3, 5, 5, 5) }}", "{}", "00003|3    |-3| 5|005|00005");
    expect("{{ '%x %X %o %#x %#X %#o %x %#x' % (255, 255, 8, 255, 255, 8, -255, 0) }}", "{}", "ff FF 10 0xff 0XFF 0o10 -ff 0x0");
    expect("{{ '%08.3f|%.2e|%g|%G|%+.1f|%5.1f|%#.0f' % (3.14159, 12345.678, 0.00001234, 1e20, -0.05, -2.25, 3) }}", "{}",
           "0003.142|1.23e+04|1.234e-05|1E+20|-0.1| -2.2|3.");
    expect("{{ '%10.4s|%-6s|%r|%c%c|%5c|' % ('abcdefgh', '\u00e9', 'a', 65, '\u00e9', 66) }}", "{}",
           "      abcd|\u00e9     |'a'|A\u00e9|    B|");
    expect("{{ '%*d|%-*d|%.*f|%d%%|%i|%u|% 05d' % (5, 42, 5, 42, 2, 3.14159, 50, true, -7, 42) }}", "{}", "   42|42   |3.14|50%|1|-7| 0042");
    expect_error("{{ '%d %d' % (1,) }}", "{}", "not enough arguments for format string");
    expect_error("{{ 'abc' % 5 }}", "{}", "not all arguments converted");
    expect_error("{{ '%d' % (1, 2) }}", "{}", "not all arguments converted");
    expect_error("{{ '%q' % 5 }}", "{}", "unsupported format character 'q'");
    expect_error("{{ '%(a)s' % {'a': 1} }}", "{}", "%(name) formats are not supported");
    expect_error("{{ '50%' % () }}", "{}", "incomplete format");
    expect_error("{{ '%c' % 1114112 }}", "{}", "%c arg not in range(0x110000)");
    expect_error("{{ '%999999999d' % 1 }}", "{}", "a string longer than 64 MiB");
    expect_error("{{ '%.999999999f' % 1.5 }}", "{}", "a string longer than 64 MiB");
    /* loops: their total work is bounded, not only each range */
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", "{}",
                 "more than 2000000 loop iterations");
    /* an empty statement: the parser used to step back before the first token */
    expect_error("{%- %}", "{}", "expected a statement name");
    expect_error("{{ x. }}", "{\"x\": 1}", "expected an attribute name");
    expect_error("{{ x| }}", "{\"x\": 1}", "expected a filter name");
    expect_error("{% for %}{% endfor %}", "{}", "expected a name");
}

static void test_renders(void) {
    char path[2048];
    snprintf(path, sizeof path, "%s/chat_templates/renders.json", test_shared_fixtures());
    hc_json_doc doc;
    if (hc_json_parse_file(&doc, path) != HC_OK) {
        printf("  skipped: %s not found\n", path);
        return;
    }
    setenv("SOURCE_DATE_EPOCH", "1795608000", 1);
    int ok = 0, total = 0;
    for (size_t f = 0; f < doc.root->len; f++) {
        const hc_json_member *m = &doc.root->u.members[f];
        char tp[2200];
        snprintf(tp, sizeof tp, "%s/chat_templates/%s", test_shared_fixtures(), m->key);
        char *tmpl;
        size_t tl;
        CHECK_OK(hc_file_read_all(tp, &tmpl, &tl));
        if (!tmpl) continue;
        int file_bad = 0;
        for (size_t r = 0; r < m->value.len; r++) {
            const hc_json *row = &m->value.u.items[r];
            /* The context transformers passes, plus the fixture generator's date_string. */
            const hc_json *messages = hc_json_get(row, "messages");
            const hc_json *agp = hc_json_get(row, "add_generation_prompt");
            /* Build the context from the row itself: messages, flags and tokens are JSON already. */
            hc_json ctxv = {.type = HC_JSON_OBJECT};
            hc_json_member mem[5];
            mem[0] = (hc_json_member){"messages", 8, *messages};
            mem[1] = (hc_json_member){"add_generation_prompt", 21, *agp};
            mem[2] = (hc_json_member){"bos_token", 9, *hc_json_get(row, "bos_token")};
            mem[3] = (hc_json_member){"eos_token", 9, *hc_json_get(row, "eos_token")};
            hc_json ds = {.type = HC_JSON_STRING, .len = 11};
            ds.u.str = "02 Jan 2026";
            mem[4] = (hc_json_member){"date_string", 11, ds};
            ctxv.u.members = mem;
            ctxv.len = 5;
            char *out = NULL;
            hc_status s = hc_jinja_render(tmpl, tl, m->key, &ctxv, &out, NULL);
            const char *want = hc_json_str(row, "rendered", NULL);
            total++;
            if (want) {
                bool same = s == HC_OK && !strcmp(out, want);
                if (!same && file_bad++ < 1)
                    fprintf(stderr, "  %s row %zu: %s\n    got  [%.300s]\n    want [%.300s]\n", m->key, r,
                            s ? hc_last_error() : "differs", out ? out : "", want);
                CHECK(same, "%s row %zu renders as transformers does", m->key, r);
                ok += same;
            } else {
                CHECK(s != HC_OK, "%s row %zu must fail (%s)", m->key, r, hc_json_str(row, "error", ""));
                if (s != HC_OK) {
                    const char *why = hc_json_str(row, "error", "");
                    CHECK(strstr(hc_last_error(), why) != NULL, "%s row %zu: error '%s' has '%s'", m->key, r,
                          hc_last_error(), why);
                }
                ok += s != HC_OK;
            }
            free(out);
        }
        free(tmpl);
    }
    printf("  chat templates: %d of %d rows as transformers\n", ok, total);
    hc_json_free(&doc);
}

int main(void) {
    test_engine();
    test_hostile();
    test_renders();
    return test_finish("template");
}
