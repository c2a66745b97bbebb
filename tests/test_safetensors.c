/* safetensors: writer round trip, the sharded reader, and a corpus of broken files. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "format/safetensors.h"
#include "hubcap.h"
#include "test_util.h"

static char tmpdir[256];

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}

/* A small valid file with three dtypes and metadata; returns its bytes (malloc'd). */
static uint8_t *make_valid(size_t *size) {
    static float a[6] = {1, 2, 3, 4, 5, 6};
    static uint16_t b[4] = {0x3f80, 0x4000, 0x4040, 0x4080};
    static int64_t c[2] = {-1, 1LL << 40};
    hc_tensor_write t[3] = {
        {.name = "b.bf16", .dtype = HC_DTYPE_BF16, .n_dims = 1, .shape = {4}, .data = b},
        {.name = "a.f32", .dtype = HC_DTYPE_F32, .n_dims = 2, .shape = {2, 3}, .data = a},
        {.name = "c.i64", .dtype = HC_DTYPE_I64, .n_dims = 1, .shape = {2}, .data = c},
    };
    const char *meta[] = {"format", "pt", "note", "quote \" and \\ and \n"};
    char path[512];
    tmp_path(path, sizeof path, "valid.safetensors");
    CHECK_OK(hc_safetensors_write(path, t, 3, meta, 2));
    char *bytes = NULL;
    CHECK_OK(hc_file_read_all(path, &bytes, size));
    return (uint8_t *)bytes;
}

static void test_round_trip(void) {
    size_t size;
    uint8_t *bytes = make_valid(&size);
    if (!bytes) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    CHECK((8 + hlen) % 64 == 0, "data buffer starts 64-byte aligned (header %llu)", (unsigned long long)hlen);
    char path[512];
    tmp_path(path, sizeof path, "valid.safetensors");
    hc_safetensors st;
    CHECK_OK(hc_safetensors_open(&st, path, true));
    CHECK(st.n_tensors == 3, "3 tensors, got %lld", (long long)st.n_tensors);
    const hc_tensor_info *a = hc_safetensors_find(&st, "a.f32");
    CHECK(a && a->dtype == HC_DTYPE_F32 && a->n_dims == 2 && a->shape[0] == 2 && a->shape[1] == 3, "a.f32 header");
    CHECK(a && ((const float *)a->data)[5] == 6.0f, "a.f32 data");
    const hc_tensor_info *c = hc_safetensors_find(&st, "c.i64");
    CHECK(c && ((const int64_t *)c->data)[1] == (1LL << 40), "c.i64 data");
    CHECK(st.metadata && !strcmp(hc_json_str(st.metadata, "note", ""), "quote \" and \\ and \n"), "metadata");
    CHECK(!strcmp(st.tensors[0].name, "a.f32") && !strcmp(st.tensors[2].name, "c.i64"), "sorted by name");
    hc_safetensors_close(&st);
    CHECK_OK(hc_safetensors_open(&st, path, false)); /* --no-mmap path */
    CHECK(st.n_tensors == 3, "no-mmap read");
    hc_safetensors_close(&st);
    free(bytes);

    /* A failed write leaves neither the target nor a temp file. */
    tmp_path(path, sizeof path, "no/such/dir/x.safetensors");
    float one = 1;
    hc_tensor_write t = {.name = "x", .dtype = HC_DTYPE_F32, .n_dims = 1, .shape = {1}, .data = &one};
    CHECK(hc_safetensors_write(path, &t, 1, NULL, 0) == HC_ERR_IO, "write into a missing folder fails");
    hc_tensor_write dup[2] = {t, t};
    tmp_path(path, sizeof path, "dup.safetensors");
    CHECK(hc_safetensors_write(path, dup, 2, NULL, 0) == HC_ERR_INVALID_ARG, "duplicate names refused");
    CHECK(!hc_path_exists(path), "nothing written for a refused write");
}

/* Read into RAM (--no-mmap), a file whose data section starts off a 64-byte boundary (the format
 * pads headers to 8 bytes) still puts its tensors on one, so vector loads of the weights do not
 * straddle cache lines; mapped, it keeps its own alignment. Both read the same values. */
static void test_aligned_read(void) {
    char header[256];
    for (int pad = 0; pad < 64; pad += 8) { /* data sections starting at every multiple of 8 mod 64 */
        snprintf(header, sizeof header, "{\"x\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}");
        size_t hl = strlen(header);
        while ((8 + hl) % 64 != (size_t)pad) header[hl++] = ' ';
        header[hl] = 0;
        char path[512];
        tmp_path(path, sizeof path, "aligned.safetensors");
        FILE *f = fopen(path, "wb");
        uint8_t len[8];
        for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)hl >> (8 * i));
        float v[16];
        for (int i = 0; i < 16; i++) v[i] = (float)i - 3.5f;
        fwrite(len, 1, 8, f), fwrite(header, 1, hl, f), fwrite(v, sizeof v[0], 16, f);
        fclose(f);
        for (int mm = 0; mm < 2; mm++) {
            hc_safetensors st;
            CHECK_OK(hc_safetensors_open(&st, path, mm == 1));
            const hc_tensor_info *x = hc_safetensors_find(&st, "x");
            CHECK(x && !memcmp(x->data, v, sizeof v), "values read (data at %d mod 64, %s)", pad, mm ? "mmap" : "RAM");
            if (!mm) CHECK(x && (uintptr_t)x->data % 64 == 0, "read into RAM, the data is 64-byte aligned (file: %d mod 64)", pad);
            hc_safetensors_close(&st);
        }
    }
}

/* Builds a file from a literal header and `data_len` zero bytes of data. */
static hc_status parse_header(const char *header, size_t data_len) {
    size_t hl = strlen(header);
    size_t n = 8 + hl + data_len;
    uint8_t *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    hc_safetensors st;
    hc_status s = hc_safetensors_parse(&st, buf, n, "broken.safetensors");
    if (!s) hc_safetensors_close(&st);
    free(buf);
    return s;
}

static void expect_broken(const char *header, size_t data_len, const char *what) {
    hc_status s = parse_header(header, data_len);
    CHECK(s != HC_OK, "accepted a broken file (%s): %s", what, header);
    CHECK(strstr(hc_last_error(), "broken.safetensors") != NULL, "error names the file: %s", hc_last_error());
    CHECK(strchr(hc_last_error(), '\n') == NULL, "error is one line: %s", hc_last_error());
}

static void test_broken_headers(void) {
    CHECK_OK(parse_header("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8));
    CHECK_OK(parse_header("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0));
    CHECK_OK(parse_header("{\"s\":{\"dtype\":\"F8_E4M3\",\"shape\":[],\"data_offsets\":[0,1]}}", 1));
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "data past the end");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape/length mismatch");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative shape");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
                  "overflowing shape");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,2],\"data_offsets\":[0,8]}}", 8,
                  "overflowing shape");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin > end");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, "overlap");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole before a tensor");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing bytes");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "duplicate names");
    expect_broken("{\"x\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    expect_broken("{\"x\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1, "sub-byte dtype");
    expect_broken("{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "no shape");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "no offsets");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "one offset");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "fractional shape");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "rank 9");
    expect_broken("{\"x\":3}", 0, "entry not an object");
    expect_broken("[]", 0, "header not an object");
    expect_broken("{\"__metadata__\":{\"a\":1}}", 0, "non-string metadata");
    expect_broken("{\"x\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "non-UTF-8 header");
    expect_broken("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "unterminated header");

    /* Header lengths that lie. */
    uint8_t small[16] = {0};
    hc_safetensors st;
    CHECK(hc_safetensors_parse(&st, small, 7, "broken.safetensors") == HC_ERR_FORMAT, "7-byte file");
    memset(small, 0xff, 8);
    CHECK(hc_safetensors_parse(&st, small, 16, "broken.safetensors") == HC_ERR_FORMAT, "huge header length");
    CHECK(strstr(hc_last_error(), "past the end") != NULL, "says why: %s", hc_last_error());
}

static uint64_t rng_state = 12345;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_corpus(void) {
    size_t size;
    uint8_t *good = make_valid(&size);
    if (!good) return;
    uint8_t *buf = malloc(size);
    /* Truncated at every point: always an error, never a crash. */
    int accepted = 0;
    for (size_t n = 0; n < size; n++) {
        memcpy(buf, good, n);
        hc_safetensors st;
        hc_status s = hc_safetensors_parse(&st, buf, n, "broken.safetensors");
        if (!s) {
            accepted++;
            hc_safetensors_close(&st);
        }
    }
    CHECK(accepted == 0, "%d truncations were accepted", accepted);
    /* Random byte flips: any verdict, but no crash (ASan/UBSan run this too). */
    int ok = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, good, size);
        int flips = 1 + (int)(rnd() % 4);
        for (int f = 0; f < flips; f++) buf[rnd() % size] ^= (uint8_t)(1u << (rnd() % 8));
        hc_safetensors st;
        if (!hc_safetensors_parse(&st, buf, size, "flipped.safetensors")) {
            ok++;
            for (int64_t i = 0; i < st.n_tensors; i++) {
                const hc_tensor_info *t = &st.tensors[i];
                CHECK((const uint8_t *)t->data >= buf && (const uint8_t *)t->data + t->n_bytes <= buf + size,
                      "accepted tensor lies inside the file");
            }
            hc_safetensors_close(&st);
        }
    }
    printf("  byte flips: %d of 3000 still valid\n", ok);
    free(buf);
    free(good);
}


static void test_checkpoints(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/llama_sharded", test_source_dir());
    hc_checkpoint *ck;
    CHECK_OK(hc_checkpoint_open(path, NULL, &ck));
    if (ck) {
        CHECK(hc_checkpoint_n_shards(ck) == 8, "8 shards, got %d", hc_checkpoint_n_shards(ck));
        CHECK(hc_checkpoint_find(ck, "lm_head.weight") != NULL, "tensor in the last shard");
        CHECK(hc_checkpoint_tensor(ck, 0) && hc_checkpoint_tensor(ck, 1) &&
                  strcmp(hc_checkpoint_tensor(ck, 0)->name, hc_checkpoint_tensor(ck, 1)->name) < 0,
              "sorted");
        hc_checkpoint_free(ck);
    }
    /* A bare .safetensors file opens without a config. */
    snprintf(path, sizeof path, "%s/tests/fixtures/models/llama2/model.safetensors", test_source_dir());
    CHECK_OK(hc_checkpoint_open(path, NULL, &ck));
    CHECK(ck && hc_checkpoint_config(ck) == NULL, "no config for a bare file");
    hc_checkpoint_free(ck);

    /* Broken folders. */
    char dir[512], file[600], src[1024];
    tmp_path(dir, sizeof dir, "ck");
    mkdir(dir, 0755);
    snprintf(file, sizeof file, "%s/config.json", dir);
    snprintf(src, sizeof src, "%s/tests/fixtures/models/llama2/config.json", test_source_dir());
    test_copy_file(src, file);
    CHECK(hc_checkpoint_open(dir, NULL, &ck) == HC_ERR_NOT_FOUND, "no weights");
    CHECK(strstr(hc_last_error(), "model.safetensors") != NULL, "says what is missing: %s", hc_last_error());
    snprintf(file, sizeof file, "%s/model.safetensors.index.json", dir);
    write_bytes(file, "{\"weight_map\":{\"a\":\"../x.safetensors\"}}", 39);
    CHECK(hc_checkpoint_open(dir, NULL, &ck) == HC_ERR_FORMAT, "index escaping the folder");
    snprintf(src, sizeof src, "%s/tests/fixtures/models/llama2/model.safetensors", test_source_dir());
    char shard[700];
    snprintf(shard, sizeof shard, "%s/s1.safetensors", dir);
    test_copy_file(src, shard);
    write_bytes(file, "{\"weight_map\":{\"nope\":\"s1.safetensors\"}}", 40);
    CHECK(hc_checkpoint_open(dir, NULL, &ck) == HC_ERR_FORMAT, "index names a tensor its shard lacks");
    CHECK(strstr(hc_last_error(), "'nope'") != NULL, "names the tensor: %s", hc_last_error());
    write_bytes(file, "{\"weight_map\":{\"lm_head.weight\":\"s2.safetensors\"}}", 50);
    CHECK(hc_checkpoint_open(dir, NULL, &ck) == HC_ERR_IO, "index names a missing shard");
    CHECK(strstr(hc_last_error(), "s2.safetensors") != NULL, "names the shard: %s", hc_last_error());
    write_bytes(file, "{\"weight_map\":{\"lm_head.weight\":\"s1.safetensors\"}}", 50);
    CHECK_OK(hc_checkpoint_open(dir, NULL, &ck));
    CHECK(ck && hc_checkpoint_n_tensors(ck) == 1, "only indexed tensors are listed");
    hc_checkpoint_free(ck);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hubcap-test-st-%ld", (long)getpid());
    mkdir(tmpdir, 0755);
    test_round_trip();
    test_aligned_read();
    test_broken_headers();
    test_corpus();
    test_checkpoints();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_finish("safetensors");
}
