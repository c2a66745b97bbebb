/* Training works: fine-tuning stories260K on a few kB of stories makes its loss on them fall
 * clearly, the saved checkpoint loads and generates, and bad settings are refused. */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hubcap.h"
#include "test_util.h"

typedef struct {
    double first, last;
    int64_t calls;
} seen;

/* The adapter file holds PEFT's tensor names. */
static void check_peft_names(const char *path) {
    hc_checkpoint *ck = NULL;
    CHECK_OK(hc_checkpoint_open(path, NULL, &ck));
    if (!ck) return;
    CHECK(hc_checkpoint_find(ck, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") &&
              hc_checkpoint_find(ck, "base_model.model.model.layers.4.mlp.down_proj.lora_B.weight"),
          "PEFT tensor names in %s", path);
    hc_checkpoint_free(ck);
}

static volatile int stop_flag;
static void stop_at_7(void *user, const hc_train_progress *p) {
    (void)user;
    if (p->step == 7) stop_flag = 1;
}

static void on_progress(void *user, const hc_train_progress *p) {
    seen *s = user;
    if (s->calls++ == 0) s->first = p->loss;
    s->last = p->loss;
}

/* The loss of the model on the whole stories file, in rows of 64. */
static double data_loss(hc_model *m, const char *data) {
    FILE *f = fopen(data, "rb");
    char buf[8192];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    hc_tokens t = {0};
    CHECK_OK(hc_tokenizer_encode(hc_model_tokenizer(m), buf, n, true, &t));
    const int64_t B = t.n / 64;
    double loss = INFINITY;
    if (B > 0) CHECK_OK(hc_model_loss_grad(m, t.ids, NULL, B, 64, NULL, &loss, NULL));
    hc_tokens_free(&t);
    return loss;
}

int main(void) {
    char stories[4096], data[4096], out[] = "/tmp/hubcap-ft-XXXXXX";
    snprintf(stories, sizeof stories, "%s/models/stories260K", test_source_dir());
    snprintf(data, sizeof data, "%s/tests/data/stories.txt", test_source_dir());
    CHECK(mkdtemp(out) != NULL, "mkdtemp");
    hc_model_params mp = hc_model_default_params();
    hc_model *m = NULL;
    CHECK_OK(hc_model_load(stories, &mp, &m));
    hc_finetune_params fp = hc_finetune_default_params();
    fp.seq_len = 64;
    CHECK(hc_finetune(m, data, &fp, NULL) == HC_ERR_INVALID_ARG && strstr(hc_last_error(), "--no-mmap"),
          "mapped weights are refused: %s", hc_last_error());
    hc_model_free(m);

    mp.use_mmap = false;
    m = NULL;
    CHECK_OK(hc_model_load(stories, &mp, &m));
    if (!m) return test_finish("finetune");
    const double before = data_loss(m, data);
    seen s = {0};
    fp.steps = 40;
    fp.lr = 3e-3;
    fp.warmup_steps = 4;
    fp.eval_fraction = 0.1;
    fp.on_progress = on_progress;
    fp.user = &s;
    hc_train_progress last;
    CHECK_OK(hc_finetune(m, data, &fp, &last));
    CHECK(s.calls == 40, "one progress call a step (%lld)", (long long)s.calls);
    CHECK(last.step == 40 && last.val_loss > 0, "40 steps and an evaluation");
    const double after = data_loss(m, data);
    printf("  loss on the stories: %.4f before, %.4f after 40 steps (running train loss %.4f -> %.4f)\n", before, after,
           s.first, s.last);
    CHECK(after < 0.7 * before, "the loss falls clearly: %.4f -> %.4f", before, after);
    char saved[4200];
    snprintf(saved, sizeof saved, "%s/model", out);
    CHECK_OK(hc_checkpoint_save(hc_model_checkpoint(m), saved, NULL));
    hc_model_free(m);

    /* The saved checkpoint loads with the trained numbers and generates. */
    hc_model *m2 = NULL;
    CHECK_OK(hc_model_load(saved, NULL, &m2));
    if (m2) {
        const double again = data_loss(m2, data);
        CHECK(fabs(again - after) < 1e-4, "the saved model has the trained loss (%.5f vs %.5f)", again, after);
        hc_generate_params gp = hc_generate_default_params(m2);
        gp.max_new_tokens = 30;
        const char *prompt = "Once upon a time";
        hc_generation g;
        CHECK_OK(hc_generate(m2, &prompt, 1, &gp, &g, NULL));
        CHECK(g.n_ids > 0 && g.text && strlen(g.text) > 0, "the saved model generates");
        printf("  generated: %s\n", g.text);
        hc_generation_free(&g);
        hc_model_free(m2);
    }
    /* Stopped after step 7 of 12 and resumed from the saved state: the same weights as 12
     * steps straight through (bit for bit: the same sums in the same order). */
    {
        char st_path[4300], dir_b[4300];
        snprintf(st_path, sizeof st_path, "%s/state.safetensors", out);
        snprintf(dir_b, sizeof dir_b, "%s/stopped", out);
        hc_finetune_params rp = hc_finetune_default_params();
        rp.seq_len = 32, rp.batch_size = 4, rp.steps = 12, rp.lr = 2e-3, rp.warmup_steps = 2;
        hc_model *ma = NULL, *mb = NULL, *mr = NULL;
        CHECK_OK(hc_model_load(stories, &mp, &ma));
        CHECK_OK(hc_model_load(stories, &mp, &mb));
        if (ma && mb) {
            CHECK_OK(hc_finetune(ma, data, &rp, NULL));
            hc_finetune_params sp = rp;
            sp.stop = &stop_flag;
            sp.on_progress = stop_at_7;
            sp.save_state = st_path;
            hc_train_progress pl;
            CHECK_OK(hc_finetune(mb, data, &sp, &pl));
            CHECK(pl.stopped && pl.step == 7, "stopped after step 7 (%lld)", (long long)pl.step);
            CHECK_OK(hc_checkpoint_save(hc_model_checkpoint(mb), dir_b, NULL));
            CHECK_OK(hc_model_load(dir_b, &mp, &mr));
            hc_finetune_params cp2 = rp;
            cp2.resume_state = st_path;
            if (mr) CHECK_OK(hc_finetune(mr, data, &cp2, &pl));
            CHECK(pl.step == 12 && !pl.stopped, "resumed to step 12 (%lld)", (long long)pl.step);
            const hc_checkpoint *ca = hc_model_checkpoint(ma), *cr = mr ? hc_model_checkpoint(mr) : NULL;
            bool same = cr && hc_checkpoint_n_tensors(ca) == hc_checkpoint_n_tensors(cr);
            for (int64_t i = 0; same && i < hc_checkpoint_n_tensors(ca); i++) {
                const hc_tensor_info *x = hc_checkpoint_tensor(ca, i), *y = hc_checkpoint_tensor(cr, i);
                same = x->n_bytes == y->n_bytes && !memcmp(x->data, y->data, x->n_bytes);
            }
            CHECK(same, "resumed weights equal straight-through weights");
        }
        hc_model_free(ma), hc_model_free(mb), hc_model_free(mr);
        unlink(st_path);
        test_rm_dir(dir_b);
    }

    /* LoRA: only the adapter trains (the base stays mapped, read-only), its loss falls, and the
     * saved adapter (PEFT's names) loads back with the same numbers. */
    {
        hc_model_params lp = hc_model_default_params(); /* mapped */
        hc_model *ml = NULL;
        CHECK_OK(hc_model_load(stories, &lp, &ml));
        if (ml) {
            const double base = data_loss(ml, data);
            CHECK_OK(hc_model_lora_init(ml, 8, 16.0, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 7));
            CHECK(fabs(data_loss(ml, data) - base) < 1e-6, "B = 0: a new adapter leaves the model as it was");
            hc_finetune_params lf = hc_finetune_default_params();
            seen ls = {0};
            lf.seq_len = 64, lf.steps = 30, lf.lr = 1e-2, lf.on_progress = on_progress, lf.user = &ls;
            CHECK_OK(hc_finetune(ml, data, &lf, NULL));
            const double trained = data_loss(ml, data);
            printf("  LoRA r=8: loss on the stories %.4f -> %.4f\n", base, trained);
            CHECK(trained < 0.8 * base, "LoRA lowers the loss: %.4f -> %.4f", base, trained);
            char adir[4300], afile[4400];
            snprintf(adir, sizeof adir, "%s/adapter", out);
            CHECK_OK(hc_model_lora_save(ml, adir));
            hc_model_free(ml);
            snprintf(afile, sizeof afile, "%s/adapter_model.safetensors", adir);
            check_peft_names(afile);
            hc_model_params ap = hc_model_default_params();
            ap.lora_path = adir;
            hc_model *ma2 = NULL;
            CHECK_OK(hc_model_load(stories, &ap, &ma2));
            if (ma2) CHECK(fabs(data_loss(ma2, data) - trained) < 1e-4, "the saved adapter gives the trained loss");
            hc_model_free(ma2);
            /* merged into the weights: the same model without an adapter */
            ap.use_mmap = false;
            ma2 = NULL;
            CHECK_OK(hc_model_load(stories, &ap, &ma2));
            if (ma2) {
                CHECK_OK(hc_model_lora_merge(ma2));
                CHECK(fabs(data_loss(ma2, data) - trained) < 1e-3, "the merged model gives the trained loss");
            }
            hc_model_free(ma2);
            unlink(afile);
            snprintf(afile, sizeof afile, "%s/adapter_config.json", adir);
            unlink(afile);
            rmdir(adir);
        }
    }

    /* JSONL conversations: only the assistant's turns are targets. A copy of stories260K with a
     * small chat template. */
    char chat_dir[4200], f1[8400], f2[8400];
    snprintf(chat_dir, sizeof chat_dir, "%s/chat", out);
    mkdir(chat_dir, 0755);
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"};
    for (int i = 0; i < 7; i++) {
        snprintf(f1, sizeof f1, "%s/%s", stories, files[i]);
        snprintf(f2, sizeof f2, "%s/%s", chat_dir, files[i]);
        test_copy_file(f1, f2);
    }
    snprintf(f2, sizeof f2, "%s/chat_template.jinja", chat_dir);
    FILE *tf = fopen(f2, "w");
    if (tf) {
        fputs("{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
              "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}", tf);
        fclose(tf);
    }
    char jsonl[4300];
    snprintf(jsonl, sizeof jsonl, "%s/chats.jsonl", out);
    FILE *jf = fopen(jsonl, "w");
    const char *animals[] = {"cat", "dog", "bird", "fish", "frog", "bear", "duck", "pig"};
    for (int i = 0; jf && i < 24; i++)
        fprintf(jf, "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me about the %s.\"}, "
                    "{\"role\": \"assistant\", \"content\": \"The %s was very happy and played all day.\"}]}\n",
                animals[i % 8], animals[i % 8]);
    if (jf) fclose(jf);
    hc_model *mc = NULL;
    CHECK_OK(hc_model_load(chat_dir, &mp, &mc));
    if (mc) {
        hc_finetune_params cp = hc_finetune_default_params();
        seen cs = {0};
        cp.seq_len = 48, cp.batch_size = 4, cp.steps = 24, cp.lr = 3e-3, cp.on_progress = on_progress, cp.user = &cs;
        hc_train_progress cl;
        CHECK_OK(hc_finetune(mc, jsonl, &cp, &cl));
        printf("  conversations: running loss on assistant tokens %.4f -> %.4f\n", cs.first, cs.last);
        CHECK(cs.last < 0.5 * cs.first, "the assistants' loss falls: %.4f -> %.4f", cs.first, cs.last);
        /* a line that is neither text nor messages names itself */
        jf = fopen(jsonl, "w");
        if (jf) fputs("{\"text\": \"fine\"}\n{\"prompt\": 1}\n", jf), fclose(jf);
        CHECK(hc_finetune(mc, jsonl, &cp, NULL) == HC_ERR_FORMAT && strstr(hc_last_error(), "chats.jsonl:2"),
              "a bad line is named: %s", hc_last_error());
        hc_model_free(mc);
    }
    unlink(jsonl);
    for (int i = 0; i < 7; i++) snprintf(f2, sizeof f2, "%s/%s", chat_dir, files[i]), unlink(f2);
    snprintf(f2, sizeof f2, "%s/chat_template.jinja", chat_dir), unlink(f2);
    rmdir(chat_dir);

    /* clean up */
    test_rm_dir(saved);
    rmdir(out);
    return test_finish("finetune");
}
