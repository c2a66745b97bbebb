/* hf://org/name[@revision]: the Hugging Face Hub, with libcurl, into the cache layout that
 * huggingface_hub itself writes:
 *
 *   $HF_HUB_CACHE/models--org--name/blobs/<etag>              the files' bytes
 *   $HF_HUB_CACHE/models--org--name/snapshots/<commit>/<file> relative symlinks to blobs
 *   $HF_HUB_CACHE/models--org--name/refs/<revision>           the commit a revision points at
 *   $HF_HUB_CACHE/.locks/models--org--name/<etag>.lock        one download of a blob at a time
 *
 * Blobs are written to <etag>.incomplete (resumed with Range), checked against their sha256
 * when the etag is one, and renamed into place; a snapshot link appears only for a whole blob. */
#include "format/hub.h"


#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "base/status.h"
#include "format/json.h"
#include "format/sha256.h"
#include "base/strbuf.h"

#define HUBCAP_USER_AGENT "hubcap/0.1 (+https://github.com/hubcap; C; libcurl)"

static hc_progress_fn progress_fn;
static void *progress_user;

void hc_set_progress_callback(hc_progress_fn fn, void *user) {
    progress_fn = fn;
    progress_user = user;
}

hc_hub_params hc_hub_default_params(void) {
    hc_hub_params p = {0};
    return p;
}

bool hc_is_hub_handle(const char *path) { return path && !strncmp(path, "hf://", 5); }

/* ---- paths and settings --------------------------------------------------------------------- */

static char *xstrdup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

static char *join2(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

static char *hf_home(void) {
    const char *h = getenv("HF_HOME");
    if (h && *h) return xstrdup(h);
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && *x) return join2(x, "huggingface");
    const char *home = getenv("HOME");
    char *cache = join2(home && *home ? home : "/tmp", ".cache");
    char *r = cache ? join2(cache, "huggingface") : NULL;
    free(cache);
    return r;
}

char *hc_hub_cache_dir(void) {
    const char *c = getenv("HF_HUB_CACHE");
    if (c && *c) return xstrdup(c);
    c = getenv("HUGGINGFACE_HUB_CACHE");
    if (c && *c) return xstrdup(c);
    char *home = hf_home();
    char *r = home ? join2(home, "hub") : NULL;
    free(home);
    return r;
}

static bool env_true(const char *name) {
    const char *v = getenv(name);
    return v && (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"));
}

/* HF_TOKEN, else the token file huggingface-cli login writes. */
static char *hub_token(void) {
    const char *t = getenv("HF_TOKEN");
    if (t && *t) return xstrdup(t);
    const char *tp = getenv("HF_TOKEN_PATH");
    char *path = tp && *tp ? xstrdup(tp) : NULL;
    if (!path) {
        char *home = hf_home();
        path = home ? join2(home, "token") : NULL;
        free(home);
    }
    char *text = NULL;
    if (path && hc_path_exists(path) && hc_file_read_all(path, &text, NULL) == HC_OK) {
        size_t n = strlen(text);
        while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ')) text[--n] = 0;
        if (!n) {
            free(text);
            text = NULL;
        }
    }
    free(path);
    return text;
}

static bool is_commit_hash(const char *s) {
    if (strlen(s) != 40) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

static bool is_sha256(const char *s) {
    if (strlen(s) != 64) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

typedef struct {
    long status;
    char commit[64];
    char etag[128];
    char location[2048];
    int64_t length;      /* Content-Length, or X-Linked-Size */
    int64_t linked_size;
    bool has_linked_etag;
} http_headers;

static void header_value(const char *line, size_t n, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (n <= nl + 1 || strncasecmp(line, name, nl) || line[nl] != ':') return;
    const char *v = line + nl + 1, *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
    /* an etag is written "W/\"abc\"" or "\"abc\"": keep abc */
    if (e - v >= 2 && v[0] == 'W' && v[1] == '/') v += 2;
    if (e - v >= 2 && *v == '"' && e[-1] == '"') v++, e--;
    size_t len = (size_t)(e - v) < cap - 1 ? (size_t)(e - v) : cap - 1;
    memcpy(out, v, len);
    out[len] = 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *user) {
    http_headers *h = user;
    size_t n = size * nitems;
    if (n >= 5 && !strncmp(buf, "HTTP/", 5)) { /* a new response (after a redirect): start over */
        char commit[64];
        memcpy(commit, h->commit, sizeof commit);
        char etag[128];
        memcpy(etag, h->etag, sizeof etag);
        bool linked = h->has_linked_etag;
        memset(h, 0, sizeof *h);
        /* keep what the first (Hub) response said about the commit and the linked etag */
        memcpy(h->commit, commit, sizeof commit);
        if (linked) {
            memcpy(h->etag, etag, sizeof etag);
            h->has_linked_etag = true;
        }
        h->length = -1;
        h->linked_size = -1;
        return n;
    }
    char tmp[128];
    header_value(buf, n, "X-Repo-Commit", h->commit, sizeof h->commit);
    tmp[0] = 0;
    header_value(buf, n, "X-Linked-Etag", tmp, sizeof tmp);
    if (tmp[0]) {
        memcpy(h->etag, tmp, sizeof tmp);
        h->has_linked_etag = true;
    }
    if (!h->has_linked_etag) header_value(buf, n, "ETag", h->etag, sizeof h->etag);
    header_value(buf, n, "Location", h->location, sizeof h->location);
    tmp[0] = 0;
    header_value(buf, n, "Content-Length", tmp, sizeof tmp);
    if (tmp[0]) h->length = strtoll(tmp, NULL, 10);
    tmp[0] = 0;
    header_value(buf, n, "X-Linked-Size", tmp, sizeof tmp);
    if (tmp[0]) h->linked_size = strtoll(tmp, NULL, 10);
    return n;
}

typedef struct {
    hc_str *mem;      /* body into memory, or */
    FILE *file;       /* into a file */
    bool write_error;
    const char *label;
    int64_t done, total;
    double t0, last;
} sink;

static size_t on_body(char *buf, size_t size, size_t nmemb, void *user) {
    sink *s = user;
    size_t n = size * nmemb;
    if (s->mem) {
        if (!hc_str_put(s->mem, buf, n)) return 0;
    } else if (s->file) {
        if (fwrite(buf, 1, n, s->file) != n) {
            s->write_error = true;
            return 0;
        }
    }
    return n;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)ultotal;
    (void)ulnow;
    sink *s = user;
    if (!progress_fn || !s->file) return 0;
    double t = now_s();
    if (t - s->last < 0.1 && dlnow != dltotal) return 0;
    s->last = t;
    progress_fn(progress_user, s->label, s->done + (int64_t)dlnow, s->total > 0 ? s->total : s->done + (int64_t)dltotal,
                t - s->t0, false);
    return 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

typedef enum { NET_OK, NET_HTTP, NET_CONNECT, NET_WRITE, NET_OTHER } net_result;

/* One request, retried with backoff on 5xx and connection errors. */
static net_result http(const char *url, bool head, bool follow, const char *token, int64_t range_from, sink *body,
                       http_headers *h, char *err, size_t errcap) {
    pthread_once(&curl_once, curl_init);
    const int attempts = 5;
    int delay_ms = 200;
    const char *d = getenv("HUBCAP_RETRY_DELAY_MS");
    if (d && *d) delay_ms = atoi(d);
    net_result r = NET_OTHER;
    for (int attempt = 0; attempt < attempts; attempt++) {
        CURL *c = curl_easy_init();
        if (!c) {
            snprintf(err, errcap, "cannot start libcurl");
            return NET_OTHER;
        }
        memset(h, 0, sizeof *h);
        h->length = h->linked_size = -1;
        if (body && body->mem) body->mem->len = 0; /* a retried reply replaces the last one */
        struct curl_slist *hdrs = NULL;
        char auth[4200];
        if (token) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
            hdrs = curl_slist_append(hdrs, auth);
        }
        char errbuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_USERAGENT, HUBCAP_USER_AGENT);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_NOBODY, head ? 1L : 0L);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 20L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L); /* a stalled transfer fails after 60 s */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, body);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, (body && body->file && progress_fn) ? 0L : 1L);
        char range[64];
        if (range_from > 0) {
            snprintf(range, sizeof range, "%lld-", (long long)range_from);
            curl_easy_setopt(c, CURLOPT_RANGE, range);
        }
        long before = body && body->file ? ftell(body->file) : 0;
        CURLcode rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &h->status);
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(c);
        if (rc == CURLE_OK && h->status < 500) return h->status < 400 ? NET_OK : NET_HTTP;
        if (body && body->write_error) {
            snprintf(err, errcap, "write failed: %s", strerror(errno));
            return NET_WRITE;
        }
        if (rc == CURLE_OK) {
            snprintf(err, errcap, "HTTP %ld", h->status);
            r = NET_HTTP;
        } else {
            snprintf(err, errcap, "%s", *errbuf ? errbuf : curl_easy_strerror(rc));
            r = (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_OPERATION_TIMEDOUT)
                    ? NET_CONNECT
                    : NET_OTHER;
        }
        /* A transfer cut off mid-file is resumed by the caller, not retried blindly here. */
        if (body && body->file && ftell(body->file) > before) return r == NET_HTTP ? NET_HTTP : NET_OTHER;
        if (attempt + 1 < attempts) {
            struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            delay_ms *= 2;
        }
    }
    return r;
}

/* ---- the handle --------------------------------------------------------------------------- */

typedef struct {
    char repo[256];     /* org/name */
    char revision[256];
    char *cache;        /* $HF_HUB_CACHE */
    char *repo_dir;     /* .../models--org--name */
    char *token;
    const char *endpoint;
} hub;

static hc_status parse_handle(hub *h, const char *handle) {
    const char *s = handle + 5;
    const char *at = strchr(s, '@');
    size_t rl = at ? (size_t)(at - s) : strlen(s);
    if (rl == 0 || rl >= sizeof h->repo) return hc_fail(HC_ERR_INVALID_ARG, "%s: not a hf://org/name[@revision] handle", handle);
    memcpy(h->repo, s, rl);
    h->repo[rl] = 0;
    snprintf(h->revision, sizeof h->revision, "%s", at && at[1] ? at + 1 : "main");
    int slashes = 0;
    for (const char *p = h->repo; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                  *p == '_' || *p == '.' || *p == '/';
        if (*p == '/') slashes++;
        if (!ok || slashes > 1) return hc_fail(HC_ERR_INVALID_ARG, "%s: '%s' is not a repo id (org/name)", handle, h->repo);
    }
    if (strstr(h->repo, "..") || h->repo[0] == '/' || h->repo[rl - 1] == '/')
        return hc_fail(HC_ERR_INVALID_ARG, "%s: '%s' is not a repo id (org/name)", handle, h->repo);
    if (strstr(h->revision, "..") || h->revision[0] == '/')
        return hc_fail(HC_ERR_INVALID_ARG, "%s: bad revision '%s'", handle, h->revision);
    h->cache = hc_hub_cache_dir();
    char folder[300] = "models--";
    size_t k = strlen(folder);
    for (const char *p = h->repo; *p && k + 3 < sizeof folder; p++) {
        if (*p == '/') {
            folder[k++] = '-';
            folder[k++] = '-';
        } else {
            folder[k++] = *p;
        }
    }
    folder[k] = 0;
    h->repo_dir = h->cache ? join2(h->cache, folder) : NULL;
    if (!h->repo_dir) return hc_fail(HC_ERR_NOMEM, "out of memory");
    const char *ep = getenv("HF_ENDPOINT");
    h->endpoint = ep && *ep ? ep : "https://huggingface.co";
    h->token = hub_token();
    return HC_OK;
}

static void hub_free(hub *h) {
    free(h->cache);
    free(h->repo_dir);
    free(h->token);
}

static char *url_escape(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1), *w = o;
    if (!o) return NULL;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("-_.~", ch)) *w++ = (char)ch;
        else w += sprintf(w, "%%%02X", ch);
    }
    *w = 0;
    return o;
}

/* ---- the cache ---------------------------------------------------------------------------- */

static char *snapshot_dir(const hub *h, const char *commit) {
    char *snaps = join2(h->repo_dir, "snapshots");
    char *r = snaps ? join2(snaps, commit) : NULL;
    free(snaps);
    return r;
}

/* The commit a revision points at in the cache, or NULL. */
static char *cached_commit(const hub *h) {
    if (is_commit_hash(h->revision)) return xstrdup(h->revision);
    char path[4096];
    snprintf(path, sizeof path, "%s/refs/%s", h->repo_dir, h->revision);
    char *text = NULL;
    if (!hc_path_exists(path) || hc_file_read_all(path, &text, NULL)) return NULL;
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = 0;
    return text;
}

/* A snapshot a model can load from: config.json and all of its weights. Writes the missing
 * files' names to `missing` (comma separated). */
static bool snapshot_complete(const char *snap, hc_str *missing) {
    bool ok = true;
    char path[4096];
    const char *need[] = {"config.json"};
    for (size_t i = 0; i < 1; i++) {
        snprintf(path, sizeof path, "%s/%s", snap, need[i]);
        if (!hc_path_exists(path)) {
            ok = false;
            if (missing) hc_str_put(missing, need[i], strlen(need[i])), hc_str_put(missing, ", ", 2);
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", snap);
    if (hc_path_exists(path)) {
        hc_json_doc doc;
        if (hc_json_parse_file(&doc, path) != HC_OK) return false;
        const hc_json *wm = hc_json_get(doc.root, "weight_map");
        for (size_t i = 0; wm && i < wm->len; i++) {
            const hc_json *f = &wm->u.members[i].value;
            if (f->type != HC_JSON_STRING) continue;
            snprintf(path, sizeof path, "%s/%s", snap, f->u.str);
            if (!hc_path_exists(path)) {
                if (missing && (!missing->data || !strstr(missing->data, f->u.str)))
                    hc_str_put(missing, f->u.str, strlen(f->u.str)), hc_str_put(missing, ", ", 2);
                ok = false;
            }
        }
        hc_json_free(&doc);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", snap);
        if (!hc_path_exists(path)) {
            ok = false;
            if (missing) hc_str_put(missing, "model.safetensors, ", 19);
        }
    }
    if (missing && missing->len >= 2) missing->data[missing->len -= 2] = 0;
    return ok;
}

static hc_status write_atomic(const char *path, const char *text) {
    char tmp[4600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return hc_fail(HC_ERR_IO, "%s: %s", tmp, strerror(errno));
    bool ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return hc_fail(HC_ERR_IO, "%s: %s", path, strerror(e));
    }
    return HC_OK;
}

/* snapshots/<commit>/<file> -> ../../blobs/<etag> (deeper files get more ../). */
static hc_status link_snapshot(const hub *h, const char *commit, const char *file, const char *etag) {
    char *snap = snapshot_dir(h, commit);
    if (!snap) return hc_fail(HC_ERR_NOMEM, "out of memory");
    char path[4096], dir[4096], target[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", snap, file);
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    *slash = 0;
    free(snap);
    if (!hc_mkdirs(dir)) return hc_fail(HC_ERR_IO, "%s: %s", dir, strerror(errno));
    size_t off = 0;
    target[0] = 0;
    off += (size_t)snprintf(target, sizeof target, "../../");
    for (const char *p = file; *p; p++)
        if (*p == '/') off += (size_t)snprintf(target + off, sizeof target - off, "../");
    snprintf(target + off, sizeof target - off, "blobs/%s", etag);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return hc_fail(HC_ERR_IO, "%s: %s", path, strerror(e));
    }
    return HC_OK;
}

static hc_status http_error(const char *handle, const char *what, long status, const char *err) {
    if (status == 401 || status == 403)
        return hc_fail(HC_ERR_IO,
                       "%s: access denied (HTTP %ld) for %s: the model may be gated; accept its licence on the Hub "
                       "and set HF_TOKEN",
                       handle, status, what);
    if (status == 404) return hc_fail(HC_ERR_NOT_FOUND, "%s: %s not found (HTTP 404): no such repository, revision or file", handle, what);
    if (status) return hc_fail(HC_ERR_IO, "%s: HTTP %ld fetching %s", handle, status, what);
    return hc_fail(HC_ERR_IO, "%s: cannot reach the Hub for %s: %s", handle, what, err);
}

/* Downloads one file of the repo at `commit` into the cache (if its blob is not there yet)
 * and links it into the snapshot. */
static hc_status fetch_file(const hub *h, const char *handle, const char *commit, const char *file) {
    char *rev = url_escape(commit);
    char url[4096];
    snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", h->endpoint, h->repo, rev, file);
    free(rev);
    http_headers hd;
    char err[512] = "";
    net_result r = http(url, true, false, h->token, 0, NULL, &hd, err, sizeof err);
    if (r != NET_OK) return http_error(handle, file, r == NET_HTTP ? hd.status : 0, err);
    if (!hd.etag[0]) return hc_fail(HC_ERR_IO, "%s: the Hub sent no ETag for %s", handle, file);
    char etag[128];
    snprintf(etag, sizeof etag, "%s", hd.etag);
    for (char *p = etag; *p; p++)
        if (*p == '/' || *p == '\\') *p = '_'; /* never a path */
    const int64_t expect = hd.linked_size >= 0 ? hd.linked_size : hd.length;

    char blobs[4096], blob[4400], part[4500], lockdir[4096], lock[4400];
    snprintf(blobs, sizeof blobs, "%s/blobs", h->repo_dir);
    snprintf(blob, sizeof blob, "%s/%s", blobs, etag);
    snprintf(part, sizeof part, "%s.incomplete", blob);
    const char *folder = strrchr(h->repo_dir, '/');
    snprintf(lockdir, sizeof lockdir, "%s/.locks/%s", h->cache, folder ? folder + 1 : h->repo_dir);
    snprintf(lock, sizeof lock, "%s/%s.lock", lockdir, etag);
    if (!hc_mkdirs(blobs) || !hc_mkdirs(lockdir)) return hc_fail(HC_ERR_IO, "%s: cannot create the cache: %s", h->repo_dir, strerror(errno));
    int lfd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (lfd < 0) return hc_fail(HC_ERR_IO, "%s: %s", lock, strerror(errno));
    flock(lfd, LOCK_EX); /* another hubcap may be fetching this blob: wait for it */
    hc_status st = HC_OK;
    for (int round = 0; !hc_path_exists(blob) && !st; round++) {
        /* Resume what an interrupted download left. */
        struct stat sb;
        int64_t have = stat(part, &sb) == 0 ? (int64_t)sb.st_size : 0;
        if (expect >= 0 && have > expect) {
            unlink(part);
            have = 0;
        }
        FILE *f = fopen(part, have ? "ab" : "wb");
        if (!f) {
            st = hc_fail(HC_ERR_IO, "%s: %s", part, strerror(errno));
            break;
        }
        sink s = {.file = f, .label = file, .done = have, .total = expect, .t0 = now_s()};
        if (have == expect && expect >= 0) r = NET_OK; /* the part is whole: only verify it */
        else r = http(url, false, true, h->token, have, &s, &hd, err, sizeof err);
        if (r == NET_OK && have > 0 && hd.status == 200) {
            /* The server ignored the range and sent everything: start the file over. */
            fclose(f);
            f = fopen(part, "wb");
            if (!f) {
                st = hc_fail(HC_ERR_IO, "%s: %s", part, strerror(errno));
                break;
            }
            s.file = f;
            s.done = 0;
            r = http(url, false, true, h->token, 0, &s, &hd, err, sizeof err);
        }
        bool closed = fclose(f) == 0;
        if (progress_fn && (r == NET_OK)) progress_fn(progress_user, file, expect, expect, now_s() - s.t0, true);
        if (r == NET_WRITE || !closed) {
            unlink(part);
            st = hc_fail(HC_ERR_IO, "%s: cannot write %s (disk full?): %s", handle, part, err[0] ? err : strerror(errno));
            break;
        }
        if (r != NET_OK) {
            /* A cut-off transfer resumes from where it stopped, a few times. */
            if (r != NET_HTTP && round < 5) continue;
            st = http_error(handle, file, r == NET_HTTP ? hd.status : 0, err);
            break;
        }
        if (stat(part, &sb) != 0 || (expect >= 0 && (int64_t)sb.st_size != expect)) {
            if (round < 5) continue;
            st = hc_fail(HC_ERR_IO, "%s: %s arrived with %lld bytes, expected %lld", handle, file,
                         (long long)sb.st_size, (long long)expect);
            break;
        }
        if (is_sha256(etag)) {
            hc_file_map m;
            st = hc_file_map_open(&m, part, true, 0);
            if (st) break;
            hc_sha256 sh;
            char hex[65];
            hc_sha256_init(&sh);
            hc_sha256_update(&sh, m.data, m.size);
            hc_sha256_final(&sh, hex);
            hc_file_map_close(&m);
            if (strcmp(hex, etag)) {
                unlink(part);
                if (round == 0) continue; /* once more from scratch, then give up */
                st = hc_fail(HC_ERR_FORMAT, "%s: %s failed its checksum twice (sha256 %s, expected %s)", handle, file, hex,
                             etag);
                break;
            }
        }
        if (rename(part, blob) != 0) st = hc_fail(HC_ERR_IO, "%s: %s", blob, strerror(errno));
    }
    flock(lfd, LOCK_UN);
    close(lfd);
    if (!st) st = link_snapshot(h, commit, file, etag);
    return st;
}

static bool wanted_by_default(const char *f) {
    static const char *names[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "tokenizer.model", "special_tokens_map.json", "chat_template.jinja",
                                  "model.safetensors.index.json", "model.safetensors", NULL};
    for (int i = 0; names[i]; i++)
        if (!strcmp(f, names[i])) return true;
    return false;
}

static bool sibling(const hc_json *sibs, const char *name) {
    for (size_t i = 0; sibs && i < sibs->len; i++)
        if (!strcmp(hc_json_str(&sibs->u.items[i], "rfilename", ""), name)) return true;
    return false;
}

static hc_status resolve_online(hub *h, const char *handle, const hc_hub_params *p, char **snapshot) {
    char *rev = url_escape(h->revision);
    char url[4096];
    snprintf(url, sizeof url, "%s/api/models/%s/revision/%s", h->endpoint, h->repo, rev);
    free(rev);
    hc_str body = {0};
    sink s = {.mem = &body};
    http_headers hd;
    char err[512] = "";
    net_result r = http(url, false, true, h->token, 0, &s, &hd, err, sizeof err);
    if (r != NET_OK) {
        hc_str_free(&body);
        if (r == NET_HTTP) {
            char what[600];
            snprintf(what, sizeof what, "revision '%s'", h->revision);
            return http_error(handle, what, hd.status, err);
        }
        return hc_fail(HC_ERR_IO, "%s: cannot reach %s: %s", handle, h->endpoint, err);
    }
    hc_json_doc info;
    hc_status st = hc_json_parse(&info, body.data ? body.data : "", body.len, "Hub API reply");
    hc_str_free(&body);
    if (st) return st;
    const char *commit = hc_json_str(info.root, "sha", NULL);
    const hc_json *sibs = hc_json_get(info.root, "siblings");
    if (!commit || !is_commit_hash(commit) || !sibs || sibs->type != HC_JSON_ARRAY) {
        hc_json_free(&info);
        return hc_fail(HC_ERR_FORMAT, "%s: the Hub API reply has no commit sha or file list", handle);
    }
    char commit_s[64];
    snprintf(commit_s, sizeof commit_s, "%s", commit);
    /* The files: a glob, or what a model needs (safetensors only). */
    const char **files = calloc(sibs->len + 1, sizeof *files);
    size_t nf = 0;
    if (!files) st = hc_fail(HC_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !st && i < sibs->len; i++) {
        const char *f = hc_json_str(&sibs->u.items[i], "rfilename", NULL);
        if (!f || strstr(f, "..") || f[0] == '/') continue;
        if (p->include ? fnmatch(p->include, f, 0) == 0 : wanted_by_default(f)) files[nf++] = f;
    }
    if (!st && !p->include) {
        if (!sibling(sibs, "config.json")) st = hc_fail(HC_ERR_NOT_FOUND, "%s: the repo has no config.json", handle);
        else if (!sibling(sibs, "model.safetensors") && !sibling(sibs, "model.safetensors.index.json")) {
            bool other = false;
            for (size_t i = 0; i < sibs->len; i++) {
                const char *f = hc_json_str(&sibs->u.items[i], "rfilename", "");
                size_t l = strlen(f);
                other |= (l > 4 && !strcmp(f + l - 4, ".bin")) || (l > 4 && !strcmp(f + l - 4, ".pth"));
            }
            st = hc_fail(HC_ERR_UNSUPPORTED, "%s: the repo has no safetensors weights%s", handle,
                         other ? " (only .bin/.pth, which hubcap does not read)" : "");
        }
    }
    /* The index first: it names the shards. */
    for (size_t i = 0; !st && i < nf; i++)
        if (!strcmp(files[i], "model.safetensors.index.json")) st = fetch_file(h, handle, commit_s, files[i]);
    for (size_t i = 0; !st && i < nf; i++)
        if (strcmp(files[i], "model.safetensors.index.json")) st = fetch_file(h, handle, commit_s, files[i]);
    if (!st && !p->include && sibling(sibs, "model.safetensors.index.json")) {
        char *snap = snapshot_dir(h, commit_s);
        char path[4096];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", snap);
        hc_json_doc idx;
        st = hc_json_parse_file(&idx, path);
        const hc_json *wm = st ? NULL : hc_json_get(idx.root, "weight_map");
        for (size_t i = 0; !st && wm && i < wm->len; i++) {
            const hc_json *f = &wm->u.members[i].value;
            if (f->type != HC_JSON_STRING || strstr(f->u.str, "..")) continue;
            snprintf(path, sizeof path, "%s/%s", snap, f->u.str);
            if (!hc_path_exists(path)) st = fetch_file(h, handle, commit_s, f->u.str);
        }
        if (wm) hc_json_free(&idx);
        free(snap);
    }
    free(files);
    hc_json_free(&info);
    if (st) return st;
    if (!is_commit_hash(h->revision)) {
        char refs[4096], ref[4400];
        snprintf(refs, sizeof refs, "%s/refs", h->repo_dir);
        snprintf(ref, sizeof ref, "%s/%s", refs, h->revision);
        char refdir[4400];
        snprintf(refdir, sizeof refdir, "%s", ref);
        *strrchr(refdir, '/') = 0; /* refs/pr/1 lives in refs/pr */
        if (!hc_mkdirs(refdir)) return hc_fail(HC_ERR_IO, "%s: %s", refdir, strerror(errno));
        if ((st = write_atomic(ref, commit_s))) return st;
    }
    *snapshot = snapshot_dir(h, commit_s);
    return *snapshot ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
}

hc_status hc_hub_resolve(const char *handle, const hc_hub_params *params, char **snapshot) {
    *snapshot = NULL;
    if (!hc_is_hub_handle(handle)) return hc_fail(HC_ERR_INVALID_ARG, "%s: not a hf:// handle", handle);
    hc_hub_params p = params ? *params : hc_hub_default_params();
    hub h = {0};
    hc_status st = parse_handle(&h, handle);
    if (st) {
        hub_free(&h);
        return st;
    }
    /* A complete snapshot in the cache needs no request at all. */
    char *commit = cached_commit(&h);
    char *snap = commit ? snapshot_dir(&h, commit) : NULL;
    hc_str missing = {0};
    const bool complete = snap && hc_path_is_dir(snap) && snapshot_complete(snap, &missing);
    const bool offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
    if (complete && !p.refresh && !p.include) {
        *snapshot = snap;
        snap = NULL;
    } else if (offline) {
        if (snap && hc_path_is_dir(snap) && (complete || p.include)) {
            *snapshot = snap;
            snap = NULL;
        } else if (snap && hc_path_is_dir(snap)) {
            st = hc_fail(HC_ERR_NOT_FOUND,
                         "%s: offline (HF_HUB_OFFLINE), and the cached snapshot %s lacks: %s; run `hubcap download %s` "
                         "with network",
                         handle, commit, missing.data ? missing.data : "files", handle);
        } else {
            st = hc_fail(HC_ERR_NOT_FOUND,
                         "%s: offline (HF_HUB_OFFLINE), and revision '%s' is not in the cache %s; run `hubcap download "
                         "%s` with network",
                         handle, h.revision, h.cache, handle);
        }
    } else {
        st = resolve_online(&h, handle, &p, snapshot);
        /* No network, but the cache can serve: use it, as huggingface_hub does. */
        if (st == HC_ERR_IO && complete && strstr(hc_last_error(), "cannot reach")) {
            *snapshot = snap;
            snap = NULL;
            st = HC_OK;
        }
    }
    hc_str_free(&missing);
    free(snap);
    free(commit);
    hub_free(&h);
    return st;
}

hc_status hc_resolve_model_path(const char *path, char **local) {
    if (hc_is_hub_handle(path)) return hc_hub_resolve(path, NULL, local);
    *local = xstrdup(path);
    return *local ? HC_OK : hc_fail(HC_ERR_NOMEM, "out of memory");
}
