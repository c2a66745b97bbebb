/* hubcap download / hubcap cache: the Hugging Face Hub cache. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char download_help[] =
    "usage: hubcap download hf://org/name[@revision] [--include GLOB] [--refresh] [--quiet]\n"
    "\n"
    "Fetches a model into the Hugging Face cache (the one transformers uses: $HF_HUB_CACHE,\n"
    "else $HF_HOME/hub, else ~/.cache/huggingface/hub) and prints the snapshot folder.\n"
    "Without --include it fetches what a model needs: config, generation config, tokenizer\n"
    "files, and the safetensors weights (never .bin or .pth).\n"
    "\n"
    "  --include GLOB   fetch the repo files matching GLOB instead (e.g. '*.json')\n"
    "  --refresh        ask the Hub even if the cache holds the revision already\n"
    "  --quiet          no progress bar (there is none when stderr is not a terminal)\n"
    "\n"
    "HF_ENDPOINT, HF_TOKEN (or the token file under HF_HOME) and HF_HUB_OFFLINE=1 are honoured.\n";

static const char cache_help[] =
    "usage: hubcap cache ls\n"
    "\n"
    "Lists the models in the Hugging Face cache with their sizes and revisions.\n";

/* A progress bar on stderr: file, bytes, rate, ETA. */
static void progress_bar(void *user, const char *file, int64_t done, int64_t total, double seconds, bool finished) {
    (void)user;
    const double mb = 1e6;
    double rate = seconds > 0 ? (double)done / seconds : 0;
    int width = 24, fill = total > 0 ? (int)((double)width * (double)done / (double)total) : 0;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    double eta = rate > 0 && total > done ? (double)(total - done) / rate : 0;
    fprintf(stderr, "\r%-32.32s [%s] %8.1f / %.1f MB  %6.1f MB/s  ETA %3.0fs", file, bar, (double)done / mb,
            (double)total / mb, rate / mb, eta);
    if (finished) fputc('\n', stderr);
    fflush(stderr);
}

void cli_setup_progress(bool quiet) {
    if (!quiet && isatty(STDERR_FILENO)) hc_set_progress_callback(progress_bar, NULL);
    else hc_set_progress_callback(NULL, NULL);
}

int cmd_download(int argc, char **argv) {
    const char *handle = NULL;
    hc_hub_params p = hc_hub_default_params();
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(download_help, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--include")) {
            if (!(p.include = cli_value(argc, argv, &i, "download"))) return EXIT_USAGE;
        } else if (!strcmp(a, "--refresh")) {
            p.refresh = true;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = true;
        } else if (a[0] == '-') {
            return cli_usage_error("download", "unknown option '%s'", a);
        } else if (handle) {
            return cli_usage_error("download", "give one hf://org/name handle");
        } else {
            handle = a;
        }
    }
    if (!handle) return cli_usage_error("download", "give a hf://org/name[@revision] handle");
    if (strncmp(handle, "hf://", 5)) return cli_usage_error("download", "'%s' is not a hf://org/name handle", handle);
    cli_setup_progress(quiet);
    char *snap;
    hc_status st = hc_hub_resolve(handle, &p, &snap);
    if (st) return cli_fail("download", st);
    printf("%s\n", snap);
    hc_free(snap);
    return EXIT_OK;
}

static int64_t dir_size(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    int64_t total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) total += dir_size(p);
        else if (S_ISREG(st.st_mode)) total += (int64_t)st.st_size;
    }
    closedir(d);
    return total;
}

int cmd_cache(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(cache_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[1], "ls")) return cli_usage_error("cache", "unknown action '%s' (ls)", argv[1]);
    if (argc > 2) return cli_usage_error("cache", "unknown option '%s'", argv[2]);
    char *cache = hc_hub_cache_dir();
    DIR *d = cache ? opendir(cache) : NULL;
    if (!d) {
        printf("%s: empty (no cache yet)\n", cache ? cache : "?");
        hc_free(cache);
        return EXIT_OK;
    }
    printf("%-48s %10s  %s\n", "REPO", "SIZE", "REVISIONS");
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "models--", 8)) continue;
        char repo[512], path[4096], refs[4200];
        snprintf(repo, sizeof repo, "%s", e->d_name + 8);
        char *sep = strstr(repo, "--");
        if (sep) {
            *sep = '/';
            memmove(sep + 1, sep + 2, strlen(sep + 2) + 1);
        }
        snprintf(path, sizeof path, "%s/%s", cache, e->d_name);
        snprintf(refs, sizeof refs, "%s/refs", path);
        char revs[512] = "";
        DIR *rd = opendir(refs);
        struct dirent *r;
        while (rd && (r = readdir(rd)))
            if (r->d_name[0] != '.' && strlen(revs) + strlen(r->d_name) + 2 < sizeof revs) {
                if (*revs) strcat(revs, ",");
                strcat(revs, r->d_name);
            }
        if (rd) closedir(rd);
        snprintf(refs, sizeof refs, "%s/blobs", path);
        printf("%-48s %8.1f MB  %s\n", repo, (double)dir_size(refs) / 1e6, *revs ? revs : "-");
        n++;
    }
    closedir(d);
    if (!n) printf("(no models in %s)\n", cache);
    hc_free(cache);
    return EXIT_OK;
}
