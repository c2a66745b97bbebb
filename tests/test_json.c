/* The JSON parser: valid documents, every class of invalid input, error positions. */
#include "format/json.h"
#include "hubcap.h"
#include "test_util.h"

static hc_status parse(hc_json_doc *d, const char *text) { return hc_json_parse(d, text, strlen(text), "t.json"); }

static void expect_invalid(const char *text, const char *why) {
    hc_json_doc d;
    hc_status st = parse(&d, text);
    CHECK(st == HC_ERR_FORMAT, "accepted invalid JSON (%s): %s", why, text);
    CHECK(strncmp(hc_last_error(), "t.json:", 7) == 0, "error names the source: %s", hc_last_error());
    hc_json_free(&d);
}

static void test_valid(void) {
    hc_json_doc d;
    const char *text = "{\"a\": [1, -2, 3.5, 1e3, -0, 12345678901234567, 123456789012345678901234],"
                       " \"s\": \"x\\n\\t\\\"\\u00e9\\ud83d\\ude00\xc3\xa9\", \"t\": true, \"f\": false,"
                       " \"n\": null, \"o\": {}, \"e\": [], \"a\": 7}";
    CHECK_OK(parse(&d, text));
    if (!d.root) return;
    const hc_json *a = hc_json_get(d.root, "a");
    CHECK(a && a->type == HC_JSON_NUMBER && a->u.num.i == 7, "duplicate key: the last wins");
    const hc_json *arr = &d.root->u.members[0].value;
    CHECK(arr->type == HC_JSON_ARRAY && arr->len == 7, "array length");
    CHECK(arr->u.items[1].is_int && arr->u.items[1].u.num.i == -2, "negative int");
    CHECK(!arr->u.items[2].is_int && arr->u.items[2].u.num.d == 3.5, "float");
    CHECK(!arr->u.items[3].is_int && arr->u.items[3].u.num.d == 1000.0, "exponent");
    CHECK(arr->u.items[5].is_int && arr->u.items[5].u.num.i == 12345678901234567LL, "int64 exact");
    CHECK(!arr->u.items[6].is_int && arr->u.items[6].u.num.d > 1.2e23, "huge int becomes double");
    const char *s = hc_json_str(d.root, "s", NULL);
    CHECK(s && !strcmp(s, "x\n\t\"\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9"), "escapes and surrogate pairs decode to UTF-8");
    CHECK(hc_json_get(d.root, "t")->u.b && !hc_json_get(d.root, "f")->u.b, "booleans");
    CHECK(hc_json_is_null(hc_json_get(d.root, "n")) && hc_json_is_null(hc_json_get(d.root, "missing")), "null");
    CHECK(hc_json_get(d.root, "o")->len == 0 && hc_json_get(d.root, "e")->len == 0, "empty containers");
    hc_json_free(&d);

    CHECK_OK(parse(&d, "\xEF\xBB\xBF  [\"\\u0000\"] \n"));
    CHECK(d.root && d.root->u.items[0].len == 1, "escaped NUL keeps its length");
    hc_json_free(&d);
}

static void test_invalid(void) {
    expect_invalid("", "empty");
    expect_invalid("   ", "blank");
    expect_invalid("[1,]", "trailing comma");
    expect_invalid("{\"a\":1,}", "trailing comma in object");
    expect_invalid("[01]", "leading zero");
    expect_invalid("[1.]", "no fraction digits");
    expect_invalid("[1e]", "no exponent digits");
    expect_invalid("[-]", "lone minus");
    expect_invalid("[NaN]", "NaN");
    expect_invalid("[1e999]", "overflowing number");
    expect_invalid("\"abc", "unterminated string");
    expect_invalid("[\"a\tb\"]", "raw control character");
    expect_invalid("[\"\\x\"]", "bad escape");
    expect_invalid("[\"\\u12\"]", "short \\u");
    expect_invalid("[\"\\ud800\"]", "lone high surrogate");
    expect_invalid("[\"\\udc00\"]", "lone low surrogate");
    expect_invalid("[\"\xc0\xaf\"]", "overlong UTF-8");
    expect_invalid("[\"\xed\xa0\x80\"]", "UTF-8 encoded surrogate");
    expect_invalid("[\"\xff\"]", "invalid byte");
    expect_invalid("[\"\xe2\x82\"]", "truncated UTF-8");
    expect_invalid("{1:2}", "non-string key");
    expect_invalid("{\"a\" 1}", "missing colon");
    expect_invalid("[1] [2]", "trailing value");
    expect_invalid("[tru]", "bad literal");
    expect_invalid("// c\n[]", "comment");
    char deep[2048];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = 0;
    expect_invalid(deep, "nesting too deep");
}

static void test_error_position(void) {
    hc_json_doc d;
    hc_status st = parse(&d, "{\n  \"a\": 1,\n  \"b\": tru\n}");
    CHECK(st == HC_ERR_FORMAT, "bad literal fails");
    CHECK(strstr(hc_last_error(), "t.json:3:8:") != NULL, "line and column: %s", hc_last_error());
}

int main(void) {
    test_valid();
    test_invalid();
    test_error_position();
    return test_finish("json");
}
