import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from ckd.errors import ModelError
from ckd.hooks import AttentionCapture

HEADS = 4


def tiny_bert(attn_implementation: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=HEADS, intermediate_size=48,
        max_position_embeddings=32, num_labels=2,
    )
    config._attn_implementation = attn_implementation
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def all_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_scores_match_eager_attentions(batch):
    ids, mask = batch
    model = tiny_bert("eager")
    with AttentionCapture(model) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert cap.num_layers == 3 and cap.num_heads == HEADS
    for layer in range(3):
        probs = torch.softmax(cap.scores(layer, mask), dim=-1)
        torch.testing.assert_close(probs, out.attentions[layer], atol=1e-5, rtol=0)
        # explicit Q K^T / sqrt(d) with HF's additive mask
        q, k = cap.queries(layer), cap.keys(layer)
        assert q.shape == (3, HEADS, 9, 8)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        manual = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + additive, dim=-1)
        torch.testing.assert_close(manual, out.attentions[layer], atol=1e-5, rtol=0)


def test_capture_is_independent_of_attention_implementation(batch):
    ids, mask = batch
    eager, sdpa = tiny_bert("eager"), tiny_bert("sdpa")
    with AttentionCapture(eager) as a:
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    with AttentionCapture(sdpa) as b:
        sdpa(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(torch.softmax(b.scores(-1, mask), -1), out.attentions[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.values(-1), b.values(-1), atol=1e-5, rtol=0)


def test_values_are_value_projection(batch):
    ids, mask = batch
    model = tiny_bert("eager")
    with AttentionCapture(model, layers=[0]) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    attn = model.bert.encoder.layer[0].attention.self
    expected = attn.value(out.hidden_states[0]).view(3, 9, HEADS, 8).transpose(1, 2)
    torch.testing.assert_close(cap.values(0), expected)
    with pytest.raises(ModelError, match="not captured"):
        cap.values(1)


def test_hooks_removed_on_exit_and_exception(batch):
    ids, mask = batch
    model = tiny_bert("eager")
    before = all_hooks(model)
    with AttentionCapture(model):
        assert all_hooks(model) == before + 9
    assert all_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(model):
            raise RuntimeError("boom")
    assert all_hooks(model) == before


def test_gradients_flow_through_captured_tensors(batch):
    ids, mask = batch
    model = tiny_bert("eager")
    with AttentionCapture(model) as cap:
        model(input_ids=ids, attention_mask=mask)
    cap.scores(0).sum().backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_errors(batch):
    with pytest.raises(ModelError, match="Sequential"):
        AttentionCapture(nn.Sequential(nn.Linear(2, 2)))
    model = tiny_bert("eager")
    with pytest.raises(ModelError, match="out of range"):
        AttentionCapture(model, layers=[3])
    cap = AttentionCapture(model)
    with pytest.raises(ModelError, match="run the model"):
        cap.scores(0)


def test_distilbert_and_bare_bert_model(batch):
    from transformers import BertModel, DistilBertConfig, DistilBertModel

    ids, mask = batch
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=32)
    config._attn_implementation = "eager"
    distil = DistilBertModel(config).eval()
    bare = BertModel(tiny_bert("eager").config).eval()
    for model in (distil, bare):
        with AttentionCapture(model) as cap:
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        probs = torch.softmax(cap.scores(-1, mask), dim=-1)
        torch.testing.assert_close(probs, out.attentions[-1], atol=1e-5, rtol=0)
