#include "model/rope.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* base ** (2i / R) as torch computes it: the exponent in f32, the power rounded to f32. */
static float pos_freq(double base, int64_t i, int64_t R) {
    const float e = (float)(2 * i) / (float)R;
    return (float)pow(base, (double)e);
}

static double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

static double yarn_correction_dim(double rotations, int64_t R, double base, double max_pos) {
    return ((double)R * log(max_pos / (rotations * 2 * M_PI))) / (2 * log(base));
}

void hc_rope_inv_freq(float *inv_freq, float *attn_factor, const hc_rope_config *r, int64_t R, int64_t max_pos,
                      int64_t seq_len) {
    const int64_t half = R / 2;
    double base = r->theta;
    *attn_factor = 1.0f;
    if (r->type == HC_ROPE_DYNAMIC) {
        const double orig = r->original_max_position_embeddings ? (double)r->original_max_position_embeddings
                                                                : (double)max_pos;
        const double len = (double)seq_len > orig ? (double)seq_len : orig;
        base = base * pow(r->factor * len / orig - (r->factor - 1), (double)R / (double)(R - 2));
    }
    for (int64_t i = 0; i < half; i++) inv_freq[i] = 1.0f / pos_freq(base, i, R);

    switch (r->type) {
    case HC_ROPE_NONE:
    case HC_ROPE_DEFAULT:
    case HC_ROPE_DYNAMIC: break;
    case HC_ROPE_LONGROPE: {
        /* transformers: the long factors while the sequence is longer than the pretrained
         * context, else the short ones; 1 / (factor * base^(2i/R)) in f32. The attention factor
         * scales cos and sin whichever factors are in use. */
        const double orig = (double)r->original_max_position_embeddings;
        const float *ext = (double)seq_len > orig ? r->long_factor : r->short_factor;
        for (int64_t i = 0; i < half; i++) inv_freq[i] = 1.0f / (ext[i] * pos_freq(r->theta, i, R));
        double af = r->attention_factor;
        if (af <= 0) af = r->factor <= 1 ? 1.0 : sqrt(1 + log(r->factor) / log(orig));
        *attn_factor = (float)af;
        break;
    }
    case HC_ROPE_LINEAR:
        for (int64_t i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / (float)r->factor;
        break;
    case HC_ROPE_LLAMA3: {
        const double old_ctx = (double)r->original_max_position_embeddings;
        const double low_wavelen = old_ctx / r->low_freq_factor;
        const double high_wavelen = old_ctx / r->high_freq_factor;
        for (int64_t i = 0; i < half; i++) {
            const float f = inv_freq[i];
            const float wavelen = (float)(2 * M_PI) / f;
            float out = wavelen > low_wavelen ? f / (float)r->factor : f;
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                const float smooth = (float)((old_ctx / wavelen - r->low_freq_factor) /
                                             (r->high_freq_factor - r->low_freq_factor));
                out = (1 - smooth) * out / (float)r->factor + smooth * out;
            }
            inv_freq[i] = out;
        }
        break;
    }
    case HC_ROPE_YARN: {
        const double factor = r->factor;
        const double orig = r->original_max_position_embeddings ? (double)r->original_max_position_embeddings
                                                                : (double)max_pos;
        double af = r->attention_factor;
        if (af <= 0) {
            if (r->mscale > 0 && r->mscale_all_dim > 0)
                af = yarn_mscale(factor, r->mscale) / yarn_mscale(factor, r->mscale_all_dim);
            else
                af = yarn_mscale(factor, 1.0);
        }
        *attn_factor = (float)af;
        const double beta_fast = r->beta_fast > 0 ? r->beta_fast : 32;
        const double beta_slow = r->beta_slow > 0 ? r->beta_slow : 1;
        double low = yarn_correction_dim(beta_fast, R, r->theta, orig);
        double high = yarn_correction_dim(beta_slow, R, r->theta, orig);
        if (r->truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0) low = 0;
        if (high > (double)(R - 1)) high = (double)(R - 1);
        if (low == high) high += 0.001;
        for (int64_t i = 0; i < half; i++) {
            const float pf = pos_freq(r->theta, i, R);
            const float extrapolation = 1.0f / pf;
            const float interpolation = 1.0f / ((float)factor * pf);
            float ramp = (float)(((double)i - low) / (high - low));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            const float extra_factor = 1.0f - ramp;
            inv_freq[i] = interpolation * (1 - extra_factor) + extrapolation * extra_factor;
        }
        break;
    }
    }
}
