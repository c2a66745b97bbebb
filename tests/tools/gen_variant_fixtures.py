#!/usr/bin/env python3
"""More conformance fixtures: configurations the 13 public ones do not cover, made exactly as
../shared/tools/gen_fixtures.py makes those (same weights init, prompts, references and
classic-config check), with the Hub's own config layout where it differs from what
save_pretrained writes. Run on a machine with torch + transformers:

    GEN_FIXTURES=../shared/tools/gen_fixtures.py python3 tests/tools/gen_variant_fixtures.py OUTDIR [NAME...]
    python3 bench/make_train_refs.py OUTDIR OUTDIR      # their training references
    python3 tests/tools/drop_adamw.py OUTDIR/*/train_reference.safetensors   # gradients only
"""
import importlib.util, json, os, sys

import torch

OUT, ONLY = sys.argv[1], set(sys.argv[2:])  # optional: the names to make
sys.argv = [sys.argv[0], OUT, "variants"]  # gen_fixtures reads OUT and SET when imported
spec = importlib.util.spec_from_file_location("gen_fixtures", os.environ.get("GEN_FIXTURES", "../shared/tools/gen_fixtures.py"))
gf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gf)

V = 320
BASE = gf.BASE
transformers = gf.transformers


def with_vocab(cls):
    """A multimodal config whose vocab_size (the text model's) gen_fixtures can read."""
    def make(**kw):
        c = getattr(transformers, cls)(**kw)
        c.vocab_size = c.text_config.vocab_size
        return c
    return make


transformers.HubcapMistral3Config = with_vocab("Mistral3Config")
transformers.HubcapLlavaConfig = with_vocab("LlavaConfig")
transformers.HubcapQwen2VLConfig = with_vocab("Qwen2VLConfig")
transformers.HubcapQwen2_5_VLConfig = with_vocab("Qwen2_5_VLConfig")
transformers.HubcapQwen3VLConfig = with_vocab("Qwen3VLConfig")
# LongRoPE as Phi-3.5-mini and Phi-4-mini carry it: one factor per rotary frequency, the long
# ones used once a sequence is longer than original_max_position_embeddings. Rotary dim here is
# 16 * 0.75 = 12 (Phi-4-mini's partial_rotary_factor), so 6 factors each.
SHORT = [1.0, 1.02, 1.05, 1.1, 1.15, 1.2]
LONG = [1.0, 1.3, 2.0, 3.5, 5.0, 6.5]
LONGROPE = dict(BASE, vocab_size=V, rope_theta=10000.0, partial_rotary_factor=0.75, tie_word_embeddings=True,
                max_position_embeddings=64, original_max_position_embeddings=16,
                rope_scaling=dict(type="longrope", short_factor=SHORT, long_factor=LONG))


def specs(which):
    return [
        # Phi-4-mini: longrope, partial rotary, tied head. Prompts of 24 and 17 tokens take the long
        # factors; the 5-token prompt's greedy run crosses 16 positions and switches.
        ("phi3_longrope", "Phi3ForCausalLM", "Phi3Config", LONGROPE, "bfloat16", {}),
        ("phi3_longrope_v5", "Phi3ForCausalLM", "Phi3Config", LONGROPE, "bfloat16", {}),
        # Phi-3-mini-4k: a sliding window on every layer
        ("phi3_window", "Phi3ForCausalLM", "Phi3Config", dict(BASE, vocab_size=V, rope_theta=10000.0, sliding_window=8), "bfloat16", {}),
        # Qwen2.5 long-context: yarn
        ("qwen2_yarn", "Qwen2ForCausalLM", "Qwen2Config", dict(BASE, vocab_size=V, rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=64,
         rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=16)), "bfloat16", {}),
        # dynamic NTK past a 16-token trained length, stored in f16
        ("llama_dynamic", "LlamaForCausalLM", "LlamaConfig", dict(BASE, vocab_size=V, rope_theta=10000.0, max_position_embeddings=16,
         rope_scaling=dict(type="dynamic", factor=2.0)), "float16", {}),
        # biases on every projection, head_dim != hidden/heads, one KV head, linear rope scaling
        ("llama_bias", "LlamaForCausalLM", "LlamaConfig", dict(BASE, vocab_size=V, rope_theta=10000.0, attention_bias=True, mlp_bias=True, head_dim=32,
         num_key_value_heads=1, rope_scaling=dict(type="linear", factor=2.0)), "float32", {}),
        # Qwen3-MoE (Qwen3-30B-A3B's layout): Qwen3 attention, experts of moe_intermediate_size,
        # routing weights renormalized over the chosen experts or not
        ("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(BASE, vocab_size=V, head_dim=32, rope_theta=1000000.0, num_experts=4,
         num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True), "bfloat16", {}),
        ("qwen3_moe_plain", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(BASE, vocab_size=V, rope_theta=1000000.0, num_experts=6,
         num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=False, tie_word_embeddings=True), "float32", {}),
        # Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2 attention, experts and a shared expert
        # scaled by a sigmoid gate
        ("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(BASE, vocab_size=V, rope_theta=1000000.0, num_experts=4,
         num_experts_per_tok=2, moe_intermediate_size=48, shared_expert_intermediate_size=96, norm_topk_prob=False,
         use_sliding_window=False), "bfloat16", {}),
        # SmolLM3: Llama without rope in every 4th layer; and a given no_rope_layers list whose
        # rope-less layers take a sliding window
        ("smollm3", "SmolLM3ForCausalLM", "SmolLM3Config", dict(BASE, vocab_size=V, num_hidden_layers=4, rope_theta=2000000.0), "bfloat16", {}),
        ("smollm3_window", "SmolLM3ForCausalLM", "SmolLM3Config", dict(BASE, vocab_size=V, num_hidden_layers=4, rope_theta=2000000.0,
         no_rope_layers=[1, 0, 1, 0], use_sliding_window=True, sliding_window=8, tie_word_embeddings=False), "float32", {}),
        # Qwen3 with sliding windows above max_window_layers
        ("qwen3_window", "Qwen3ForCausalLM", "Qwen3Config", dict(BASE, vocab_size=V, num_hidden_layers=3, head_dim=16, rope_theta=1000000.0,
         use_sliding_window=True, sliding_window=8, max_window_layers=1), "bfloat16", {}),
        # Mistral without a window, stored in f16
        ("mistral_nowin", "MistralForCausalLM", "MistralConfig", dict(BASE, vocab_size=V, rope_theta=1000000.0, sliding_window=None), "float16", {}),
        # Phi-2 (model_type phi): parallel blocks, LayerNorm, biases everywhere (the LM head too),
        # partial rotary 0.4 of a 20-wide head, stored in f16
        ("phi2", "PhiForCausalLM", "PhiConfig", dict(vocab_size=V, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
         num_attention_heads=4, max_position_embeddings=512, partial_rotary_factor=0.4, rope_theta=10000.0,
         hidden_act="gelu_new", layer_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0), "float16", {}),
        # multimodal checkpoints, their language model on text: Mistral Small 3.1's layout
        # (mistral3: a Mistral and a Pixtral vision tower) and LLaVA's (a Llama and a CLIP one)
        ("mistral3", "Mistral3ForConditionalGeneration", "HubcapMistral3Config", dict(
            text_config=dict(BASE, model_type="mistral", vocab_size=V, rope_theta=1000000.0, head_dim=16, sliding_window=None),
            vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=16, head_dim=16), image_token_index=V - 1), "bfloat16", {}),
        ("llava", "LlavaForConditionalGeneration", "HubcapLlavaConfig", dict(
            text_config=dict(BASE, model_type="llama", vocab_size=V, rope_theta=10000.0),
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, image_size=32, patch_size=16, projection_dim=32), image_token_index=V - 1), "float32", {}),
        # Granite 3.x: Llama with multipliers on the embeddings, the residual branches, the
        # attention scale (1/head_dim here, not 1/sqrt) and the logits; tied head
        ("granite", "GraniteForCausalLM", "GraniteConfig", dict(BASE, vocab_size=V, rope_theta=10000.0, embedding_multiplier=12.0,
         residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=4.0, tie_word_embeddings=True), "bfloat16", {}),
        # OLMo 2: norms after attention and the MLP instead of before, q/k norms over the whole
        # projection; and one with biases on the attention's projections, stored in f32
        ("olmo2", "Olmo2ForCausalLM", "Olmo2Config", dict(BASE, vocab_size=V, rope_theta=500000.0), "bfloat16", {}),
        ("olmo2_bias", "Olmo2ForCausalLM", "Olmo2Config", dict(BASE, vocab_size=V, num_hidden_layers=3, rope_theta=10000.0,
         attention_bias=True, tie_word_embeddings=True), "float32", {}),
        # Qwen2-VL, Qwen2.5-VL (the Hub's layout: text keys at the top, rope_scaling type mrope,
        # weights under model. and visual.) and Qwen3-VL (text_config, model.language_model.):
        # their language model on text, where mrope is the default rope. head_dim 16: sections of 8.
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "HubcapQwen2VLConfig", dict(
            text_config=dict(BASE, vocab_size=V, tie_word_embeddings=True,
                             rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3])),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=V - 1, video_token_id=V - 2, vision_start_token_id=V - 3), "bfloat16", {}),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "HubcapQwen2_5_VLConfig", dict(
            text_config=dict(BASE, vocab_size=V, tie_word_embeddings=False,
                             rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3])),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0]),
            image_token_id=V - 1, video_token_id=V - 2, vision_start_token_id=V - 3), "bfloat16", {}),
        ("qwen3_vl", "Qwen3VLForConditionalGeneration", "HubcapQwen3VLConfig", dict(
            text_config=dict(BASE, vocab_size=V, head_dim=16, tie_word_embeddings=True,
                             rope_parameters=dict(rope_type="default", rope_theta=5000000.0, mrope_section=[3, 3, 2],
                                                  mrope_interleaved=True)),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                               spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                               deepstack_visual_indexes=[0]),
            image_token_id=V - 1, video_token_id=V - 2, vision_start_token_id=V - 3), "bfloat16", {}),
        # OLMo 3: OLMo 2 with a sliding window on three layers of four; and with yarn, as its
        # long-context checkpoints carry it
        ("olmo3", "Olmo3ForCausalLM", "Olmo3Config", dict(BASE, vocab_size=V, num_hidden_layers=4, rope_theta=500000.0,
         sliding_window=8), "bfloat16", {}),
        ("olmo3_yarn", "Olmo3ForCausalLM", "Olmo3Config", dict(BASE, vocab_size=V, num_hidden_layers=4, rope_theta=500000.0,
         sliding_window=8, max_position_embeddings=64, rope_scaling=dict(rope_type="yarn", factor=4.0,
         original_max_position_embeddings=16, attention_factor=1.2, beta_fast=32.0, beta_slow=1.0)), "float32", {}),
        # EXAONE 4: OLMo 2's blocks, per-head q/k norms, windows on three layers of four and no rope
        # on the others; and without windows (rope everywhere), tied, as EXAONE-4.0-1.2B
        ("exaone4", "Exaone4ForCausalLM", "Exaone4Config", dict(BASE, vocab_size=V, num_hidden_layers=4, num_key_value_heads=2,
         rope_theta=1000000.0, sliding_window=8, sliding_window_pattern=4), "bfloat16", {}),
        ("exaone4_global", "Exaone4ForCausalLM", "Exaone4Config", dict(BASE, vocab_size=V, num_key_value_heads=2,
         rope_theta=1000000.0, sliding_window=None, layer_types=["full_attention", "full_attention"], tie_word_embeddings=True),
         "float32", {}),
        # StarCoder2: LayerNorm with biases, a plain GELU MLP (c_fc, c_proj), biases everywhere and
        # a window on every layer, tied; and without biases or a window, untied, in f32
        ("starcoder2", "Starcoder2ForCausalLM", "Starcoder2Config", dict(vocab_size=V, hidden_size=64, intermediate_size=160,
         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, norm_epsilon=1e-5,
         rope_theta=100000.0, sliding_window=8, use_bias=True, bos_token_id=1, eos_token_id=2, pad_token_id=0), "bfloat16", {}),
        ("starcoder2_nobias", "Starcoder2ForCausalLM", "Starcoder2Config", dict(vocab_size=V, hidden_size=64, intermediate_size=96,
         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512, norm_epsilon=1e-5,
         rope_theta=10000.0, sliding_window=None, use_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
         pad_token_id=0), "float32", {}),
        # Granite MoE: Granite's multipliers, and experts in two tensors for all of them
        ("granitemoe", "GraniteMoeForCausalLM", "GraniteMoeConfig", dict(BASE, vocab_size=V, rope_theta=10000.0, num_local_experts=4,
         num_experts_per_tok=2, intermediate_size=48, embedding_multiplier=12.0, residual_multiplier=0.22,
         attention_multiplier=0.0625, logits_scaling=4.0, tie_word_embeddings=True), "bfloat16", {}),
        # Seed-OSS: Llama with q/k/v biases and, switched on here, o_proj's
        ("seed_oss", "SeedOssForCausalLM", "SeedOssConfig", dict(BASE, vocab_size=V, head_dim=16, rope_theta=10000000.0,
         attention_bias=True, attention_out_bias=True, mlp_bias=False), "bfloat16", {}),
        # GPT-2 variants: attention scaled by 1/layer, plain GELU, n_inner set
        ("gpt2_inv", "GPT2LMHeadModel", "GPT2Config", dict(vocab_size=V, n_positions=128, n_embd=64, n_layer=3, n_head=4, n_inner=96,
         activation_function="gelu", scale_attn_by_inverse_layer_idx=True, bos_token_id=1, eos_token_id=2), "float32", {}),
    ]


def hub_style(path):
    """Phi-3.5 / Phi-4-mini's config.json: original_max_position_embeddings at the top level,
    rope_scaling {"type": "longrope", "long_factor", "short_factor"}."""
    cfg = json.load(open(path))
    sc = cfg.get("rope_scaling")
    if isinstance(sc, dict) and sc.get("rope_type") == "longrope":
        cfg["original_max_position_embeddings"] = sc.pop("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        sc.pop("factor", None)
        sc.pop("attention_factor", None)
        sc["type"] = sc.pop("rope_type")
        json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)
    return True


# Dynamic NTK rope is stateful in transformers: a model keeps the table of the longest sequence
# it has seen, so a reference would depend on the prompts run before it. Every model's rope
# goes back to its loaded state before each prompt and after each greedy run, so each
# reference is what a freshly loaded model computes.
LOADED = []
load_ref = gf.load_ref


def fresh_rope():
    for m in LOADED:
        for mod in m.modules():
            if hasattr(mod, "original_inv_freq") and hasattr(mod, "max_seq_len_cached"):
                mod.inv_freq = mod.original_inv_freq.clone()
                mod.max_seq_len_cached = mod.original_max_seq_len


def load_fresh(d):
    arch = json.load(open(os.path.join(d, "config.json")))["architectures"][0]
    if arch.endswith("ForConditionalGeneration"):  # multimodal: its own class, text in, logits out
        m = getattr(transformers, arch).from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    else:
        m = load_ref(d)
    LOADED.append(m)
    return m


greedy = gf.greedy


def greedy_fresh(m, ids, n):
    if m.config.model_type == "phi3" and getattr(m.config, "rope_parameters", {}).get("rope_type") == "longrope":
        return greedy_full(m, ids, n)
    fresh_rope()
    out = greedy(m, ids, n)
    fresh_rope()
    return out


def greedy_full(m, ids, n):
    """Greedy decoding by whole forwards, no cache. Once a longrope sequence passes
    original_max_position_embeddings every position takes the long factors, so the cache made
    with the short ones is void: Phi3ForCausalLM.prepare_inputs_for_generation drops it to
    recompute the sequence, but in transformers 5.17 generate() then runs only the newest token,
    without its context, and the text goes astray from there. This is the recompute it means."""
    toks, margins = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = m(ids).logits[0, -1].float()
            top = logits.topk(2).values
            t = int(logits.argmax())
            toks.append(t)
            margins.append(float(top[0] - top[1]))
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
    return torch.tensor([toks]), torch.tensor(margins)


def qwen_vl_hub(path):
    """Qwen2-VL / Qwen2.5-VL as their Hub checkpoints carry them (transformers 4.4x): the text
    model's keys at the top of config.json beside vision_config, rope_scaling {"type": "mrope"},
    and weights under model. (the language model) and visual. Returns True if it rewrote."""
    cfg = json.load(open(path))
    if cfg.get("model_type") not in ("qwen2_vl", "qwen2_5_vl"):
        return False
    tc = cfg.pop("text_config")
    for k, v in tc.items():
        if k not in ("model_type", "architectures", "transformers_version"):
            cfg[k] = v
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = {"type": "mrope", "mrope_section": rp["mrope_section"]}
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)
    from safetensors.torch import load_file, save_file
    st = os.path.join(os.path.dirname(path), "model.safetensors")
    t = load_file(st)
    ren = {}
    for k, v in t.items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.visual."):
            k = "visual." + k[len("model.visual."):]
        ren[k] = v.contiguous()
    save_file(ren, st, metadata={"format": "pt"})
    return True


gf.load_ref = load_fresh
gf.greedy = greedy_fresh
classic = gf.classic_config
gf.classic_config = lambda path: qwen_vl_hub(path) or (classic(path) and hub_style(path))
gf.specs = lambda which: [x for x in specs(which) if not ONLY or x[0] in ONLY]
gf.main()

# Say how the longrope fixtures' greedy tokens were made.
NOTE = ("greedy tokens from whole forwards without a cache: transformers 5.17's generate() loses the context "
        "where longrope switches to its long factors (see greedy_full in tests/tools/gen_variant_fixtures.py)")
for name in ("phi3_longrope", "phi3_longrope_v5"):
    path = os.path.join(OUT, name, "reference.json")
    if os.path.exists(path):
        meta = json.load(open(path))
        meta["greedy_note"] = NOTE
        json.dump(meta, open(path, "w"), indent=2)
