"""The rule set deciding which entries the SVD-based methods treat as matrices."""

import pytest

from tsvmerge.merging.entry_rules import EntryRules, detect_family, rules_for
from tsvmerge.merging.tsv import uses_svd

CLIP_KEYS = [("model.text_projection", (512, 512)), ("model.visual.proj", (768, 512)),
             ("model.visual.transformer.resblocks.0.attn.in_proj_weight", (2304, 768)),
             ("model.visual.ln_post.weight", (768,)), ("model.visual.conv1.weight", (768, 3, 32, 32))]


@pytest.mark.parametrize(("key", "shape"), CLIP_KEYS)
def test_clip_family_is_the_published_rule(key, shape):
    rules = rules_for([key for key, _ in CLIP_KEYS])
    assert rules.family == "clip"
    assert rules.uses_svd(key, shape) == uses_svd(key, shape)
    assert rules.uses_svd(key, shape, compression=True) == uses_svd(key, shape, include_text_projection=True)


def test_decoder_lm_averages_embeddings_and_head():
    keys = ["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
    rules = rules_for(keys)
    assert rules.family == "decoder_lm"
    assert not rules.uses_svd("model.embed_tokens.weight", (128, 64))
    assert not rules.uses_svd("lm_head.weight", (128, 64), compression=True)
    assert rules.uses_svd("model.layers.0.self_attn.q_proj.weight", (64, 64))
    assert not rules.uses_svd("model.norm.weight", (64,))


def test_family_from_config_architectures():
    assert detect_family(["x.weight"], {"architectures": ["MistralForCausalLM"]}) == "decoder_lm"
    assert detect_family(["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"]) == "decoder_lm"
    assert detect_family(["x.weight"], {"architectures": ["BertModel"]}) == "clip"


def test_overrides():
    rules = EntryRules("decoder_lm", svd_keys=r"q_proj|lm_head", average_keys=r"layers\.1\.")
    assert rules.uses_svd("lm_head.weight", (128, 64))
    assert rules.uses_svd("model.layers.0.self_attn.q_proj.weight", (64, 64))
    assert not rules.uses_svd("model.layers.0.self_attn.k_proj.weight", (64, 64))  # not matched by svd_keys
    assert not rules.uses_svd("model.layers.1.self_attn.q_proj.weight", (64, 64))  # average_keys wins
    assert not rules.uses_svd("model.q_proj.bias", (64,))  # only matrices


def test_bad_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="--svd-keys"):
        EntryRules(svd_keys="(")
    with pytest.raises(ValueError, match="unknown model family"):
        EntryRules(family="vision_mamba")
