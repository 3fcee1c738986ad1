"""Models: the registry, and each reference model's structure pinned against the upstream configs
(docs/models.md): parameter counts, layers, heads, the fusion inputs."""

from __future__ import annotations

import pytest
import torch

from ecgqa.models import (
    MODELS,
    create_config,
    create_model,
    quick_variant,
    reference_models,
    task_of,
    variant_for_tests,
)
from tests.models.model_helpers import (
    make_model,
    model_inputs,
)

# ------------------------------------------------------------------------------------------ registry


def test_registry_names_every_size():
    assert reference_models() == [
        "fusion-small",
        "fusion-base",
        "medvill",
        "blind",
        "deaf",
        "m3ae-base",
        "resnet-lstm",
        "se-wrn",
        "resnet-attn",
        "w2v-cmsc-rlm",
    ]
    # every family has exactly one test size, and variant_for_tests finds it from any member
    families = {v.family for v in MODELS.values()}
    for family in families:
        tests = [n for n, v in MODELS.items() if v.family == family and v.size == "test"]
        assert len(tests) == 1, (family, tests)
    assert (
        variant_for_tests("fusion-base")
        == variant_for_tests("fusion-small")
        == variant_for_tests("fusion-quick")
        == "fusion-test"
    )
    assert variant_for_tests("blind") == "blind-test" and variant_for_tests("se-wrn") == "se-wrn-test"
    assert (
        variant_for_tests("m3ae-small") == "m3ae-test"
        and variant_for_tests("fusion-prenorm-base") == "fusion-prenorm-test"
    )
    assert quick_variant("fusion-small") == "fusion-quick" and quick_variant("blind") == "blind-quick"
    assert quick_variant("se-wrn") == "se-wrn-quick"
    with pytest.raises(ValueError, match="no quickstart size"):
        quick_variant("deaf")
    with pytest.raises(ValueError, match="unknown model 'gpt'"):
        create_model("gpt")
    assert {task_of(n) for n in ("se-wrn", "resnet-attn", "se-wrn-test")} == {"upperbound"}
    assert {task_of(n) for n in ("fusion-small", "resnet-lstm", "medvill", "m3ae-base")} == {"qa"}


def test_configs_list_their_fields_explicitly():
    """Every config field is a named __init__ parameter (as BertConfig), none come from a shared dict."""
    import inspect

    from ecgqa.models.layers import QAConfig, UpperboundConfig

    for name, variant in MODELS.items():
        params = set()
        for cls in variant.config.__mro__:
            if cls in (QAConfig, UpperboundConfig) or cls is variant.config:
                params |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert set(variant.fields) <= params, (name, set(variant.fields) - params)
    assert not hasattr(QAConfig, "SHARED")


def test_quick_sizes_keep_the_reference_architecture():
    quick, ref = create_config("fusion-quick"), create_config("fusion-small")
    for field in ("activation_dropout", "dropout", "attention_dropout", "use_ecg", "use_text"):
        assert getattr(quick, field) == getattr(ref, field)
    assert type(quick) is type(ref) and quick.hidden_size == 64 and quick.num_layers == 2
    assert create_config("blind-quick").use_ecg is False


# ------------------------------------------------------------------------------- structure (published)
# Parameter counts with BERT's vocabulary (30522), 512 text positions and the PTB-XL answer space (103) /
# grounding classes (83). The transformer and Nejedly counts are checked against closed-form sums of the
# layer shapes below (an independent count); the others were computed once with
# sum(p.numel() for p in create_model(name, classes=...).parameters()) on the meta device and pinned.

PARAMS = {
    "fusion-small": 86_096_359,
    "fusion-base": 114_447_847,
    "medvill": 114_447_847,
    "blind": 108_972_391,
    "deaf": 90_532_327,
    "m3ae-base": 313_729_127,
    "resnet-lstm": 48_428_775,
    "se-wrn": 1_361_757,
    "resnet-attn": 6_563_127,
    "fusion-prenorm-small": 83_431_271,
    "fusion-prenorm-base": 111_782_759,
}


def _meta_model(name: str):
    n_classes = 103 if task_of(name) == "qa" else 83
    with torch.device("meta"):
        return create_model(name, classes=[str(i) for i in range(n_classes)])


def _fusion_params(layers: int, use_ecg: bool = True, use_text: bool = True) -> int:
    """Closed-form parameter count of the reference fusion transformer (upstream shapes)."""
    D, F, V, P, C, ch, k, g = 768, 3072, 30522, 512, 103, 256, 128, 16
    n = 2 * D  # LayerNorm on the joint input sequence
    if use_ecg:
        n += 12 * ch * 2 + 2 * ch + 3 * ch * ch * 2  # 4 convs (no bias), GroupNorm after the first
        n += 2 * ch + ch * D + D  # LayerNorm over channels, projection to the width
        n += D * (D // g) * k + k + D  # weight-normed positional conv: v, g (per kernel tap), bias
        n += 0 if use_text else D  # deaf: learned SEP vector
    if use_text:
        n += V * D + 2 * D + P * D + 2 * D  # word embeddings (also the SEP), LayerNorm, positions, 2 token types
    n += layers * (4 * (D * D + D) + 4 * D + D * F + F + F * D + D)  # post-norm layers
    return n + (2 * use_ecg + use_text) * D * C + C


def _nejedly_params(C: int = 83, ch: int = 256) -> int:
    stem = 12 * ch * 15 + 2 * ch
    block = 2 * ch * ch * 9 + 2 * 2 * ch + ch * ch  # two k9 convs, two BNs, 1x1 shortcut conv
    mha = 3 * ch * ch + 3 * ch + ch * ch + ch
    return stem + 5 * block + mha + (ch + 12) * C + C


@pytest.mark.slow
def test_parameter_counts_at_the_published_width():
    counts = {name: sum(p.numel() for p in _meta_model(name).parameters()) for name in PARAMS}
    assert counts == PARAMS
    assert PARAMS["fusion-small"] == _fusion_params(8)
    assert PARAMS["fusion-base"] == PARAMS["medvill"] == _fusion_params(12)
    assert PARAMS["blind"] == _fusion_params(12, use_ecg=False)
    assert PARAMS["deaf"] == _fusion_params(12, use_text=False)
    assert PARAMS["resnet-attn"] == _nejedly_params()


@pytest.mark.parametrize(
    "name,layers", [("fusion-small", 8), ("fusion-base", 12), ("medvill", 12), ("blind", 12), ("deaf", 12)]
)
def test_reference_transformers_structure(name, layers):
    from ecgqa.models.layers import ConvPositionalEncoding, PostNormLayer

    model, c = _meta_model(name), create_config(name)
    assert len(model.layers) == layers and all(isinstance(layer, PostNormLayer) for layer in model.layers)
    assert (c.hidden_size, c.num_heads, c.ffn_size) == (768, 12, 3072)
    assert (c.dropout, c.attention_dropout, c.activation_dropout) == (0.0, 0.0, 0.1)
    layer = model.layers[0]
    assert layer.fc1.out_features == 3072 and layer.attn.heads == 12
    assert layer.drop.p == 0.0 and layer.act_drop.p == 0.1
    assert c.feature_grad_mult == (0.1 if name == "medvill" else 1.0)
    if c.use_ecg:
        convs = [m for m in model.extractor.modules() if isinstance(m, torch.nn.Conv1d)]
        assert [(m.out_channels, m.kernel_size[0], m.stride[0], m.bias is None) for m in convs] == [
            (256, 2, 2, True)
        ] * 4
        assert isinstance(model.extractor.layers[0][1], torch.nn.GroupNorm)
        assert isinstance(model.pos_conv, ConvPositionalEncoding)
        pos = model.pos_conv.conv
        assert pos.kernel_size == (128,) and pos.groups == 16
        assert torch.nn.utils.parametrize.is_parametrized(pos, "weight")  # weight norm
        assert (model.sep is None) == c.use_text  # fusion: [SEP] is a word embedding; deaf: learned
    if c.use_text:
        assert model.type_emb.num_embeddings == 2 and model.pos_emb.num_embeddings == 512
        assert model.word_emb.num_embeddings == 30522 and c.sep_token_id == 102
    assert model.head.in_features == (2 * c.use_ecg + c.use_text) * 768


def test_fusion_gives_312_ecg_tokens_for_5000_samples():
    model = create_model("fusion-small", classes=["a"], num_layers=0, vocab_size=200).eval()
    assert model.extractor.output_length(5000) == 312
    with torch.no_grad():
        assert model.ecg_tokens(torch.zeros(1, 12, 5000)).shape == (1, 312, 768)
        (e1, m1), (e2, m2) = model.embed_ecgs(torch.randn(1, 2, 12, 5000), None)
    assert e1.shape == (1, 312, 768) and e2.shape == (1, 313, 768)  # [SEP] + ECG2
    assert m1.all() and m2.all()


def test_m3ae_structure():
    from ecgqa.models.m3ae import FirstTokenPooler

    model, c = _meta_model("m3ae-base"), create_config("m3ae-base")
    assert (c.ecg_layers, c.text_layers, c.fusion_layers) == (12, 12, 6)
    assert (len(model.ecg_blocks), len(model.text_blocks), len(model.fusion_ecg), len(model.fusion_text)) == (
        12,
        12,
        6,
        6,
    )
    assert isinstance(model.text_pooler, FirstTokenPooler) and isinstance(model.ecg_pooler, FirstTokenPooler)
    assert model.ecg_cls.shape == (1, 1, 768)
    head = model.head
    assert [type(m).__name__ for m in head] == ["Linear", "LayerNorm", "GELU", "Linear"] and head[0].in_features == 1536


def test_m3ae_pools_the_first_token_of_each_stream(qa_batch, qa_data):
    """Upstream's Pooler: only position 0 of each fused stream reaches the head, through Linear + tanh."""
    torch.manual_seed(7)
    model = make_model("m3ae-test", qa_data).eval()
    seen = {}
    model.text_pooler.register_forward_hook(lambda m, i, o: seen.__setitem__("text", (i[0], o)))
    model.ecg_pooler.register_forward_hook(lambda m, i, o: seen.__setitem__("ecg", (i[0], o)))
    with torch.no_grad():
        model(**model_inputs(qa_batch, "m3ae-test"))
    for name in ("text", "ecg"):
        x, out = seen[name]
        pooler = getattr(model, f"{name}_pooler")
        torch.testing.assert_close(out, torch.tanh(x[:, 0] @ pooler.dense.weight.T + pooler.dense.bias))


def test_resnet_lstm_structure():
    from ecgqa.models.resnet_lstm import Bottleneck1d

    model, c = _meta_model("resnet-lstm"), create_config("resnet-lstm")
    blocks = [m for m in model.resnet.layers if isinstance(m, Bottleneck1d)]
    assert len(blocks) == 3 + 4 + 6 + 3 and model.resnet.out_dim == 2048
    assert model.resnet.stem[0].kernel_size == (7,) and model.resnet.stem[0].stride == (2,)
    assert isinstance(model.resnet.stem[3], torch.nn.MaxPool1d)
    lstm = model.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional) == (768, 512, 2, False)
    assert model.text_proj.in_features == 2 * 2 * 512 and model.text_proj.out_features == c.final_dim == 1024
    assert model.ecg_proj.in_features == 2048 and model.head.in_features == 1024


def test_se_wrn_structure():
    from ecgqa.models.se_wrn import SEWideBlock

    model = _meta_model("se-wrn")
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (12, 16, (11,), (1,))
    blocks = [m for m in model.blocks if isinstance(m, SEWideBlock)]
    assert len(blocks) == 12
    assert [b.conv1.out_channels for b in blocks] == [16] * 3 + [32] * 3 + [64] * 3 + [128] * 3
    assert all(b.conv1.kernel_size == (11,) and b.conv2.kernel_size == (11,) for b in blocks)
    assert [b.conv1.stride[0] for b in blocks] == [2, 1, 1] * 4
    for b in blocks[::3]:  # first block of each stage: AvgPool + 1x1 conv shortcut
        assert isinstance(b.shortcut[0], torch.nn.AvgPool1d) and b.shortcut[1].kernel_size == (1,)
    assert all(b.shortcut is None for i, b in enumerate(blocks) if i % 3)
    assert blocks[0].bn1 is None and all(b.bn1 is not None for b in blocks[1:])
    assert all(b.drop.p == 0.3 for b in blocks) and model.final_drop.p == 0.3
    assert blocks[-1].se.fc1.out_features == 128 // 8
    assert model.final_norm.num_features == 128 and model.head.in_features == 128


def test_se_wrn_head_is_a_global_max_pool():
    torch.manual_seed(8)
    model = create_model("se-wrn-test", classes=["a", "b"]).eval()
    ecg = torch.randn(2, 12, 1000)
    feats = {}
    model.final_norm.register_forward_hook(lambda m, i, o: feats.__setitem__("x", o))
    with torch.no_grad():
        logits = model(ecg).logits
        expected = model.head(torch.relu(feats["x"]).amax(-1))
    torch.testing.assert_close(logits, expected)


def test_resnet_attn_structure():
    from ecgqa.models.resnet_attn import NejedlyBlock

    model = _meta_model("resnet-attn")
    assert (model.stem.out_channels, model.stem.kernel_size, model.stem.stride) == (256, (15,), (2,))
    blocks = list(model.blocks)
    assert len(blocks) == 5 and all(isinstance(b, NejedlyBlock) for b in blocks)
    assert all(b.conv1.kernel_size == (9,) and b.conv1.stride == (2,) and b.conv1.out_channels == 256 for b in blocks)
    assert all(isinstance(b.shortcut[0], torch.nn.AvgPool1d) for b in blocks)
    mha = model.attention
    assert isinstance(mha, torch.nn.MultiheadAttention) and (mha.embed_dim, mha.num_heads) == (256, 8)
    assert model.final_drop.p == 0.5 and model.head.in_features == 256 + 12


def test_resnet_attn_reads_the_lead_indicator():
    """lead_indicator=mask: same (zeroed) signal, different lead subset: only the indicator differs, the scores move."""
    torch.manual_seed(9)
    model = create_model("resnet-attn-test", classes=["a", "b", "c"], lead_indicator="mask").eval()
    ecg = torch.randn(1, 12, 2000)
    ecg[:, 6:] = 0
    limb = torch.zeros(1, 12, dtype=torch.bool)
    limb[:, :6] = True
    with torch.no_grad():
        a = model(ecg, lead_mask=limb).logits
        b = model(ecg, lead_mask=torch.ones(1, 12, dtype=torch.bool)).logits
    # the difference is exactly the head's weights on the six indicator entries that changed
    torch.testing.assert_close(b - a, model.head.weight[:, -6:].sum(1)[None], rtol=1e-5, atol=1e-5)


def _head_input(model, ecg, lead_mask) -> torch.Tensor:
    seen = {}
    handle = model.head.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        model(ecg, lead_mask=lead_mask)
    handle.remove()
    return seen["x"][:, -12:]


def test_resnet_attn_lead_indicator_is_upstreams_nonzero_rule_by_default():
    """Default: upstream's (signal != 0).all(-1) on the masked input; "mask": the question's lead subset."""
    torch.manual_seed(9)
    assert create_config("resnet-attn").lead_indicator == "nonzero"
    model = create_model("resnet-attn-test", classes=["a", "b", "c"]).eval()
    ecg = torch.randn(2, 12, 2000)
    ecg[0, 3, 100] = 0.0  # one exact-zero sample: upstream counts the lead as absent
    subset = torch.ones(2, 12, dtype=torch.bool)
    subset[:, 6:] = False  # zeroed by the mask: absent under both rules
    expected = subset.clone()
    expected[0, 3] = False
    torch.testing.assert_close(_head_input(model, ecg, subset), expected.float())
    with torch.no_grad():
        model.config.lead_indicator = "mask"
        torch.testing.assert_close(_head_input(model, ecg, subset), subset.float())
    # a checkpoint saved before the field existed (no lead_indicator in config.json) keeps the mask it was trained with
    from ecgqa.models import ResNetAttnConfig

    old = {k: v for k, v in create_config("resnet-attn-test").to_dict().items() if k != "lead_indicator"}
    assert ResNetAttnConfig.from_dict(old).lead_indicator == "mask"
    with pytest.raises(ValueError, match="lead_indicator 'other'"):
        create_config("resnet-attn", lead_indicator="other")


def test_m3ae_head_is_bert_normal_initialised():
    """Upstream m3ae_qa: head.apply(init_weights): every Linear N(0, 0.02), zero bias."""
    torch.manual_seed(4)
    model = create_model("m3ae-test", classes=[f"c{i}" for i in range(400)])
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2
    for linear in linears:
        assert abs(linear.weight.std().item() - 0.02) < 0.002, linear
        assert abs(linear.weight.mean().item()) < 0.002
        assert torch.count_nonzero(linear.bias) == 0


# ------------------------------------------------------------------------------------ the fusion inputs


def test_fusion_sep_is_the_sep_word_embedding(qa_batch, qa_data):
    torch.manual_seed(10)
    model = make_model("fusion-test", qa_data).eval()
    inputs = model_inputs(qa_batch, "fusion-test")
    sep = qa_data.tokenizer.sep_token_id
    with torch.no_grad():
        ref = model(**inputs).logits
        model.word_emb.weight[sep] += 1.0
        out = model(**inputs).logits
    two_ecgs = qa_batch["ecg_mask"][:, 1]
    assert not torch.allclose(out[two_ecgs], ref[two_ecgs])
    sep_in_question = (inputs["input_ids"] == sep).any(1)
    untouched = ~two_ecgs & ~sep_in_question
    torch.testing.assert_close(out[untouched], ref[untouched], rtol=1e-5, atol=1e-6)


def test_fusion_positional_conv_spans_both_ecgs_deaf_does_not():
    """Reference fusion: one conv over [ECG1][SEP][ECG2], so ECG2 moves ECG1's last positions; deaf: per ECG."""
    torch.manual_seed(11)
    ecg = torch.randn(1, 2, 12, 1000)
    other = ecg.clone()
    other[:, 1] = torch.randn(1, 12, 1000)
    for name, joint in (("fusion-test", True), ("deaf-test", False)):
        model = create_model(name, classes=["a"], vocab_size=200, sep_token_id=3, pos_conv_kernel=8).eval()
        with torch.no_grad():
            a = model.embed_ecgs(ecg, None)[0][0]
            b = model.embed_ecgs(other, None)[0][0]
        assert torch.allclose(a[:, :-4], b[:, :-4])  # beyond the kernel's reach: unchanged
        assert torch.allclose(a[:, -4:], b[:, -4:]) != joint


def test_post_norm_layer_output_is_normalised():
    from ecgqa.models.layers import PostNormLayer

    torch.manual_seed(12)
    layer = PostNormLayer(16, 2, 32, 0.0, 0.0, 0.0)
    y = layer(torch.randn(2, 5, 16) * 7 + 3, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
